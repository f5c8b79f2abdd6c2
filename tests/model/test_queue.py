"""KeyQueue: pointer arithmetic, wrap-around, fill, persistence, gathered-key enqueue."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import KeyQueue

pytestmark = pytest.mark.unit


def _keys(n: int, d: int, start: int) -> torch.Tensor:
    """(n, d) rows whose first coordinate is a recognisable id start, start+1, ..."""
    k = torch.zeros(n, d)
    k[:, 0] = torch.arange(start, start + n, dtype=torch.float32)
    return k


def test_initial_queue_is_unit_columns_and_empty() -> None:
    q = KeyQueue(dim=16, size=32)
    assert q.queue.shape == (16, 32)
    torch.testing.assert_close(q.queue.norm(dim=0), torch.ones(32))
    assert int(q.ptr) == 0 and int(q.count) == 0 and float(q.fill()) == 0.0


def test_pointer_advances_and_wraps_around() -> None:
    q = KeyQueue(dim=4, size=10)
    q.enqueue(_keys(4, 4, 100))  # slots 0..3
    assert int(q.ptr) == 4
    q.enqueue(_keys(4, 4, 200))  # slots 4..7
    assert int(q.ptr) == 8
    q.enqueue(_keys(4, 4, 300))  # slots 8, 9, then 0, 1 (wrap)
    assert int(q.ptr) == 2 and int(q.count) == 12
    ids = q.queue[0].tolist()
    assert ids == [302.0, 303.0, 102.0, 103.0, 200.0, 201.0, 202.0, 203.0, 300.0, 301.0]
    assert float(q.fill()) == 1.0


def test_fill_counts_real_keys_capped_at_size() -> None:
    q = KeyQueue(dim=4, size=8)
    fills = []
    for step in range(5):
        q.enqueue(_keys(2, 4, 10 * step))
        fills.append(float(q.fill()))
    assert fills == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_full_size_batch_overwrites_everything_and_keeps_ptr() -> None:
    q = KeyQueue(dim=4, size=6)
    q.enqueue(_keys(3, 4, 0))
    q.enqueue(_keys(6, 4, 50))  # starts at slot 3, wraps, lands back at 3
    assert int(q.ptr) == 3
    assert q.queue[0].tolist() == [53.0, 54.0, 55.0, 50.0, 51.0, 52.0]


def test_enqueue_rejects_bad_shapes() -> None:
    q = KeyQueue(dim=4, size=6)
    with pytest.raises(ValueError, match="do not fit"):
        q.enqueue(torch.zeros(7, 4))
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        q.enqueue(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="size"):
        KeyQueue(dim=4, size=0)


def test_queue_ptr_and_count_persist_in_state_dict() -> None:
    q = KeyQueue(dim=8, size=12)
    for step in range(4):
        q.enqueue(F.normalize(torch.randn(5, 8), dim=1))
    sd = q.state_dict()
    assert set(sd) == {"queue", "ptr", "count"}
    restored = KeyQueue(dim=8, size=12)
    restored.load_state_dict(sd)
    torch.testing.assert_close(restored.queue, q.queue, rtol=0, atol=0)
    assert int(restored.ptr) == 20 % 12 and int(restored.count) == 20
    # Both continue identically after the restore.
    nxt = F.normalize(torch.randn(5, 8), dim=1)
    q.enqueue(nxt)
    restored.enqueue(nxt)
    torch.testing.assert_close(restored.queue, q.queue, rtol=0, atol=0)


def test_enqueue_of_keys_gathered_from_ranks_gives_identical_queues() -> None:
    """Each simulated rank enqueues the rank-ordered concatenation of every rank's keys."""
    world, n, d = 3, 4, 6
    queues = [KeyQueue(d, 24) for _ in range(world)]
    for qu in queues[1:]:
        qu.load_state_dict(queues[0].state_dict())  # DDP broadcasts rank 0's buffers once
    for step in range(5):
        per_rank = [_keys(n, d, 1000 * step + 100 * r) for r in range(world)]
        gathered = torch.cat(per_rank, dim=0)  # what dist.all_gather_nograd returns
        for qu in queues:
            qu.enqueue(gathered)
    for qu in queues[1:]:
        torch.testing.assert_close(qu.queue, queues[0].queue, rtol=0, atol=0)
    # 5 steps x 12 keys = 60 = 2.5 laps of 24: slots 0..11 hold step 4, in rank order.
    expected = [4000 + 100 * r + i for r in range(3) for i in range(4)]
    assert queues[0].queue[0, :12].tolist() == expected
    assert int(queues[0].ptr) == 60 % 24
