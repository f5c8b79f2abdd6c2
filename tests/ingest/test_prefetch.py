"""DevicePrefetcher: order kept, each batch carries the data state as of that batch, errors
reach the consumer, and closing early never hangs (CPU path: same thread and queue)."""

from __future__ import annotations

import time

import pytest
import torch

from pipeline.ingest.prefetch import DevicePrefetcher

pytestmark = pytest.mark.unit


class _Source:
    """A loader stand-in whose state advances as batches are pulled (like Loader.epoch)."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.pulled = n, fail_at, 0

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise OSError(f"shard gone at batch {i}")
            self.pulled = i + 1
            yield {"view1": torch.full((2, 1, 4, 4), i, dtype=torch.uint8),
                   "view2": torch.full((2, 1, 4, 4), 100 + i, dtype=torch.uint8), "step": i}

    def state(self) -> dict[str, int]:
        return {"step": self.pulled}


def test_batches_come_in_order_with_the_state_as_of_each_batch() -> None:
    src = _Source(7)
    with DevicePrefetcher(src, torch.device("cpu"), depth=3, state_fn=src.state) as pre:
        got = list(pre)
    assert [b["step"] for b, _ in got] == list(range(7))
    assert [int(b["view1"][0, 0, 0, 0]) for b, _ in got] == list(range(7))
    assert [int(b["view2"][0, 0, 0, 0]) for b, _ in got] == [100 + i for i in range(7)]
    # the prefetcher pulls ahead, yet each batch's state is the cursor right after it
    assert [s["step"] for _, s in got] == list(range(1, 8))


def test_a_source_error_reaches_the_consumer_after_the_good_batches() -> None:
    src = _Source(5, fail_at=3)
    pre = DevicePrefetcher(src, torch.device("cpu"), depth=2)
    seen = []
    with pytest.raises(OSError, match="batch 3"):
        for batch, _ in pre:
            seen.append(batch["step"])
    assert seen == [0, 1, 2]
    pre.close()


def test_closing_early_stops_the_thread() -> None:
    src = _Source(1000)
    pre = DevicePrefetcher(src, torch.device("cpu"), depth=2)
    it = iter(pre)
    next(it)
    t0 = time.perf_counter()
    pre.close()
    assert time.perf_counter() - t0 < 2.0
    assert not pre._thread.is_alive()
    assert src.pulled < 10  # bounded read-ahead: depth + the ones in hand


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        DevicePrefetcher([], torch.device("cpu"), depth=0)
