"""pipeline.dist: no-ops in one process; 2-process gloo DDP == one process with split BN.

The equivalence test trains MoCo for 3 SGD steps on the same global batches twice:
  * 2 processes (gloo on 127.0.0.1), DDP via `dist.wrap_ddp`, bn="shuffle", 4 samples per rank;
  * 1 process, bn="split" with 2 splits, the concatenated 8-sample batch.
Split BN computes the query statistics over rows [0:4] and [4:8] (= what each rank sees), and
the key side uses the same seeded permutation (drawn on rank 0 and broadcast under DDP), so
each key BN chunk holds the same shuffled samples as the corresponding rank. Loss (rank mean),
queue, pointer, all weights and the rank-averaged BN statistics must then agree. As a
control, one process *without* split BN must disagree: the equivalence is due to the design.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from pipeline import dist
from pipeline.config import MocoConfig
from pipeline.model import MoCo, small_cnn

pytestmark = pytest.mark.unit

GLOBAL_BATCH = 8
STEPS = 3


def _train(world: int, rank: int, bn: str, symmetric: bool) -> dict[str, object]:
    """3 MoCo SGD steps on this rank's share of fixed global batches; returns the end state."""
    torch.manual_seed(0)
    cfg = MocoConfig(dim=16, queue_size=48, momentum=0.9, temperature=0.2,
                     symmetric=symmetric, bn=bn, bn_splits=2)
    moco = MoCo(small_cnn(in_channels=1, width=4), cfg, seed=7)
    model = dist.wrap_ddp(moco)
    opt = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.2,
                          momentum=0.9, weight_decay=1e-4)
    n = GLOBAL_BATCH // world
    losses = []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(100 + step)
        v1 = torch.randn(GLOBAL_BATCH, 1, 12, 12, generator=g)
        v2 = v1 + 0.5 * torch.randn(GLOBAL_BATCH, 1, 12, 12, generator=g)
        loss, _ = model(v1[rank * n:(rank + 1) * n], v2[rank * n:(rank + 1) * n])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(dist.all_reduce_mean(loss).item())
    dist.average_bn_stats(moco)
    return {"losses": losses, "state": {k: v.clone() for k, v in moco.state_dict().items()}}


def _shuffle_check(rank: int, world: int) -> dict[str, object]:
    """Shuffle a batch of globally unique ids across ranks and bring it back."""
    x = (torch.arange(4, dtype=torch.float32) + 4 * rank).view(4, 1).repeat(1, 3)  # (4, 3)
    x_shuf, idx_unshuffle = dist.shuffle_batch(x, torch.Generator().manual_seed(rank + 11))
    y = dist.unshuffle_batch(x_shuf * 10 + 1, idx_unshuffle)
    return {"mine": x_shuf[:, 0].tolist(), "back_ok": torch.equal(y, x * 10 + 1)}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        assert dist.is_distributed() and dist.rank() == rank and dist.world_size() == world
        result = {"shuffle": _shuffle_check(rank, world),
                  "sum": dist.all_reduce_sum(torch.tensor([2**40 + rank])).tolist()}
        for symmetric in (False, True):
            result[f"sym={symmetric}"] = _train(world, rank, "shuffle", symmetric)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def _assert_states_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


def test_shuffle_across_ranks_mixes_samples_and_returns_them(ddp_results: list[dict]) -> None:
    mine = [r["shuffle"]["mine"] for r in ddp_results]
    assert sorted(mine[0] + mine[1]) == list(range(8))  # a partition of the global batch
    assert set(mine[0]) != {0, 1, 2, 3}  # rank 0's key batch holds rank 1 samples too
    assert all(r["shuffle"]["back_ok"] for r in ddp_results)


@pytest.mark.parametrize("symmetric", [False, True])
def test_ddp_two_ranks_equal_one_process_with_split_bn(ddp_results: list[dict],
                                                       symmetric: bool) -> None:
    key = f"sym={symmetric}"
    r0, r1 = ddp_results[0][key], ddp_results[1][key]
    # Both ranks hold the very same queue, pointer and weights.
    for name in ("queue.queue", "queue.ptr", "queue.count", "step"):
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    for name, value in r0["state"].items():
        if "encoder" in name or "head" in name:
            if "running" not in name:
                torch.testing.assert_close(value, r1["state"][name], rtol=0, atol=0, msg=name)
    single = _train(1, 0, "split", symmetric)
    assert single["losses"] == pytest.approx(r0["losses"], rel=1e-5, abs=1e-6)
    _assert_states_close(single["state"], r0["state"])
    assert int(r0["state"]["queue.count"]) == STEPS * GLOBAL_BATCH * (2 if symmetric else 1)


def test_control_one_process_without_split_bn_differs(ddp_results: list[dict]) -> None:
    plain = _train(1, 0, "shuffle", False)
    ddp = ddp_results[0]["sym=False"]
    diff = max(abs(a - b) for a, b in zip(plain["losses"], ddp["losses"]))
    assert diff > 1e-3  # BN over 8 samples is not BN over 2 x 4: the split is what matters


def test_all_reduce_sum_keeps_int64_counts_exact(ddp_results: list[dict]) -> None:
    # 2**41 + 1 is not representable in float32: the sum stays in int64
    assert [r["sum"] for r in ddp_results] == [[2**41 + 1]] * 2


def test_collectives_are_no_ops_without_a_process_group() -> None:
    assert not dist.is_distributed() and dist.rank() == 0 and dist.world_size() == 1
    t = torch.arange(6.0).view(3, 2)
    assert dist.all_gather_nograd(t) is t
    assert dist.broadcast(t, 0) is t
    m = dist.all_reduce_mean(t)
    assert torch.equal(m, t) and m is not t
    c = torch.tensor([7])
    assert torch.equal(dist.all_reduce_sum(c), c) and dist.all_reduce_sum(c) is not c
    dist.barrier()
    module = torch.nn.Linear(2, 2)
    assert dist.wrap_ddp(module) is module and dist.unwrap(module) is module
    dist.average_bn_stats(module)
