"""2-process gloo (CPU) runs of the global-batch losses equal one process on the whole batch.

SimCLR: each rank embeds its 4 of the 8 images, gathers z with `dist.all_gather_with_grad`,
and takes NT-Xent of its anchors against all 2N - 1 others; gradients are averaged over ranks (by hand, and by
`dist.wrap_ddp` in a second variant). The
rank-mean loss and every parameter gradient must equal one process on the 8 images. The
encoder has no BatchNorm, so only the loss's coupling across ranks is under test. Controls:
a per-rank-only loss (negatives from this rank alone) has another value, and a gather without
gradient (the usual bug: only the local anchors carry gradient) has the right value but other
gradients. MoCo v3: queries against the keys gathered from both ranks (no gradient through
keys) give the single-process loss and gradients.
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
import torch.nn.functional as F
from torch import nn

from pipeline import dist
from pipeline.config.methods import SimclrConfig
from pipeline.model import SimCLR, in_batch_ctr, nt_xent

pytestmark = pytest.mark.unit

GLOBAL_BATCH = 8
T = 0.5


class _FlatNet(nn.Module):
    """(N, 1, 6, 6) -> (N, 12), no BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(36, 12)
        self.feature_dim = 12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x.flatten(1)))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    v1 = torch.randn(GLOBAL_BATCH, 1, 6, 6, generator=g)
    return v1, v1 + 0.4 * torch.randn(GLOBAL_BATCH, 1, 6, 6, generator=g)


def _simclr() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(_FlatNet(), SimclrConfig(dim=8, hidden_dim=16, bn=False, temperature=T))


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gradients averaged over ranks (what DDP hands the optimizer)."""
    return {n: dist.all_reduce_mean(p.grad) for n, p in model.named_parameters()}


def _run(variant: str, world: int, rank: int) -> dict[str, object]:
    """One forward/backward of `variant` on this rank's share; rank-mean loss and grads."""
    model = _simclr()
    v1, v2 = _batch()
    n = GLOBAL_BATCH // world
    x1, x2 = v1[rank * n:(rank + 1) * n], v2[rank * n:(rank + 1) * n]
    if variant == "simclr":
        loss, _ = model(x1, x2)
    elif variant == "simclr_ddp":  # DDP averages the gradients itself (same process group)
        loss, _ = dist.wrap_ddp(model)(x1, x2)
    else:
        z = F.normalize(model.head(model.encoder(torch.cat([x1, x2]))), dim=1)
        z1, z2 = z[:n], z[n:]
        if variant == "per_rank":  # negatives from this rank only
            loss, _ = nt_xent(z1, z2, T)
        else:  # "nograd_gather": gathered copies without gradient, own rows spliced back
            a1, a2 = dist.all_gather_nograd(z1).clone(), dist.all_gather_nograd(z2).clone()
            a1[rank * n:(rank + 1) * n], a2[rank * n:(rank + 1) * n] = z1, z2
            loss, _ = nt_xent(z1, z2, T, all1=a1, all2=a2, offset=rank * n)
    loss.backward()
    return {"loss": dist.all_reduce_mean(loss).item(), "grads": _grads(model)}


def _moco_v3_ctr(world: int, rank: int) -> dict[str, object]:
    torch.manual_seed(1)
    proj = nn.Linear(36, 8)
    v1, v2 = _batch()
    keys = F.normalize(torch.randn(GLOBAL_BATCH, 8, generator=torch.Generator().manual_seed(2)),
                       dim=1)
    n = GLOBAL_BATCH // world
    sl = slice(rank * n, (rank + 1) * n)
    q = F.normalize(proj(v1[sl].flatten(1)), dim=1)
    loss, _ = in_batch_ctr(q, dist.all_gather_nograd(keys[sl]), 0.2, offset=rank * n)
    loss.backward()
    return {"loss": dist.all_reduce_mean(loss).item(), "grads": _grads(proj)}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        result = {v: _run(v, world, rank)
                  for v in ("simclr", "simclr_ddp", "per_rank", "nograd_gather")}
        result["moco_v3"] = _moco_v3_ctr(world, rank)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return torch.load(out / "rank0.pt", weights_only=True)


def _assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7, msg=name)


def _max_grad_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("variant", ["simclr", "simclr_ddp"])
def test_simclr_two_ranks_equal_one_process_on_the_global_batch(two_ranks: dict,
                                                                variant: str) -> None:
    single = _run("simclr", 1, 0)
    assert two_ranks[variant]["loss"] == pytest.approx(single["loss"], rel=1e-6)
    _assert_grads_close(two_ranks[variant]["grads"], single["grads"])


def test_control_per_rank_negatives_give_another_loss(two_ranks: dict) -> None:
    single = _run("simclr", 1, 0)
    assert abs(two_ranks["per_rank"]["loss"] - single["loss"]) > 0.05  # 2n-2 vs 2N-2 negatives
    assert _max_grad_diff(two_ranks["per_rank"]["grads"], single["grads"]) > 1e-3


def test_control_gather_without_gradient_gets_the_loss_but_not_the_gradient(two_ranks: dict
                                                                            ) -> None:
    single = _run("simclr", 1, 0)
    assert two_ranks["nograd_gather"]["loss"] == pytest.approx(single["loss"], rel=1e-6)
    assert _max_grad_diff(two_ranks["nograd_gather"]["grads"], single["grads"]) > 1e-3


def test_moco_v3_in_batch_keys_from_both_ranks_equal_one_process(two_ranks: dict) -> None:
    single = _moco_v3_ctr(1, 0)
    assert two_ranks["moco_v3"]["loss"] == pytest.approx(single["loss"], rel=1e-6)
    _assert_grads_close(two_ranks["moco_v3"]["grads"], single["grads"])
