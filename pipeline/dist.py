"""Every collective mocopipe uses, in one place. Without a process group all are no-ops.

The model (`pipeline/model/`) never talks to `torch.distributed` itself: it calls these
helpers, which in a single process return their input unchanged (or do the local part of
the work), so the same MoCo code runs in one CPU process and under DDP.

Collectives here assume every rank passes tensors of the same shape (the epoch plan
guarantees equal per-rank batches), as `all_gather` requires.

DDP (`wrap_ddp`): the wrapped module is usually `MoCo`. DDP registers gradient hooks only on
parameters with `requires_grad=True` (query encoder + head); the key encoder's parameters
are `requires_grad=False` and are updated in place by the momentum rule, identically on every
rank because they start identical (DDP broadcasts all parameters and buffers from rank 0 once,
at construction) and follow identical (all-reduced) query weights. `broadcast_buffers` is off:
the queue is kept identical on every rank by construction (each rank enqueues the keys
gathered from all ranks, in rank order), so re-broadcasting its `dim x K` floats before every
forward would only cost bandwidth; BN running statistics stay per-rank (as with any
non-synced BN) and `average_bn_stats` makes them equal (the rank mean) before evaluation or
export.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def is_distributed() -> bool:
    """True when a default process group exists (then collectives really communicate)."""
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


@torch.no_grad()
def all_gather_nograd(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from all ranks along dim 0, in rank order; no gradient flows back.

    (n, ...) on each rank -> (world_size * n, ...). Single process: `t` itself.
    """
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    tdist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank's gradient to the rank that owns the rows.

    Each rank's loss uses all ranks' rows; DDP later averages parameter gradients, so the
    gradient of the mean loss reaches rank s's rows as the sum over ranks r of
    d loss_r / d rows_s: an all-reduce (sum) of the incoming gradient, sliced to rank s.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(world_size())]
        tdist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        n = grad.shape[0] // world_size()
        return grad[rank() * n:(rank() + 1) * n]


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from all ranks along dim 0, in rank order, with gradient flowing back.

    (n, ...) on each rank -> (world_size * n, ...). The backward pass all-reduces the
    gradient, so rank s's rows receive the gradient from every rank's loss (the global-batch
    losses of SimCLR and MoCo v3). Single process: `t` itself (same autograd graph).
    """
    if not is_distributed():
        return t
    out: torch.Tensor = _GatherWithGrad.apply(t)
    return out


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `t` in place with rank `src`'s value and return it. Single process: `t`."""
    if is_distributed():
        tdist.broadcast(t, src)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over ranks, as a new tensor (float dtypes). Single process: a detached copy."""
    out = t.detach().clone()
    if is_distributed():
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
        out /= world_size()
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks, as a new tensor (any dtype: int64 counts stay exact). Single
    process: a detached copy."""
    out = t.detach().clone()
    if is_distributed():
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def all_gather_object(obj: object) -> list[object]:
    """Every rank's picklable `obj`, in rank order (``[obj]`` outside a process group)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- shuffle BN


@torch.no_grad()
def shuffle_batch(x: torch.Tensor, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle a batch across all ranks (MoCo's shuffling BN), keeping this rank's slice.

    Gathers the global batch (N = world_size * n), draws one permutation on rank 0 (from
    `generator`, on the CPU) and broadcasts it, and returns this rank's slice of the permuted
    batch. The key encoder then computes BN statistics over a random subset of the global
    batch, so a query and its positive key never share batch statistics.

    Args:
        x: (n, ...) this rank's batch.
        generator: CPU generator for the permutation (only rank 0's is used).
    Returns:
        x_this: (n, ...) = x_all[perm[rank * n:(rank + 1) * n]].
        idx_unshuffle: (N,) long, the inverse permutation, for `unshuffle_batch`.
    """
    x_all = all_gather_nograd(x)  # (N, ...)
    n_all = x_all.shape[0]
    perm = torch.randperm(n_all, generator=generator).to(x.device)  # (N,)
    broadcast(perm, src=0)
    idx_unshuffle = torch.argsort(perm)  # (N,)
    idx_this = perm.view(world_size(), -1)[rank()]  # (n,)
    return x_all[idx_this], idx_unshuffle


@torch.no_grad()
def unshuffle_batch(y: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo `shuffle_batch`: (n, ...) outputs on shuffled samples -> (n, ...) for this rank's
    own samples, in their original order."""
    y_all = all_gather_nograd(y)  # (N, ...) outputs in permuted order
    idx_this = idx_unshuffle.view(world_size(), -1)[rank()]  # (n,)
    return y_all[idx_this]


# ----------------------------------------------------------------------------- modules


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm with SyncBatchNorm (batch statistics over all ranks).

    Without a process group SyncBatchNorm computes plain per-process BN. Under DDP, PyTorch's
    SyncBatchNorm needs CUDA (NCCL) inputs; on CPU/gloo use `moco.bn = "shuffle"`.
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def wrap_ddp(module: nn.Module, **ddp_kwargs: object) -> nn.Module:
    """Wrap `module` in DistributedDataParallel when a process group exists, else return it.

    Defaults: `broadcast_buffers=False` (see the module docstring: the MoCo queue is kept
    identical by construction), `device_ids=[i]` when the parameters live on CUDA device i.
    Gradients are averaged over ranks for the parameters with `requires_grad=True` only, so
    the momentum (key) encoder inside MoCo is left to the momentum update. Keyword arguments
    override the defaults (e.g. `find_unused_parameters=True`).
    """
    if not is_distributed():
        return module
    kwargs: dict[str, object] = {"broadcast_buffers": False}
    device = next(module.parameters()).device
    if device.type == "cuda":
        kwargs["device_ids"] = [device.index]
    kwargs.update(ddp_kwargs)
    return DistributedDataParallel(module, **kwargs)  # type: ignore[arg-type]


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or `module` itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


@torch.no_grad()
def average_bn_stats(module: nn.Module) -> None:
    """Make BatchNorm running statistics equal on all ranks: their rank mean.

    Call before evaluation or export under DDP with `broadcast_buffers=False`. Other buffers
    (the MoCo queue, its pointer, counters) are identical on every rank by construction and
    are left alone.
    """
    if not is_distributed():
        return
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                if buf is not None:
                    tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
                    buf /= world_size()
