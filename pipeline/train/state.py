"""What a checkpoint holds, and how each rank's part reaches rank 0.

`state.pt`  (identical on every rank, written by rank 0):
    {"model": MoCo state_dict (query + key encoders, heads, queue, ptr, step counter),
     "optimizer": SGD state_dict, "scaler": GradScaler state_dict or None,
     "schedule": LR schedule parameters, "step": int, "epoch": int, "world_size": int,
     "nonfinite": int}
`ranks.pt`  (one entry per rank, gathered to rank 0):
    [{"loader": Loader.state_dict(), "rng": rng_state(augment generator)}, ...]

RNG states are stored as tensors, ints and lists only, so checkpoints load with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from pipeline import dist
from pipeline.train.checkpoint import pack, unpack


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """torch (CPU and CUDA), numpy, python and the augment generator states of this process."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "augment": generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what `rng_state` captured (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    generator.set_state(state["augment"])


def gather_to_all(obj: Any, device: torch.device | str = "cpu") -> list[Any]:
    """Every rank's `obj` (tensors, dicts, lists, numbers), in rank order, on every rank.

    Pickle-free: each rank packs `obj` with `torch.save`, the byte lengths are gathered,
    the padded byte tensors are gathered with `dist.all_gather_nograd`, and each part is
    unpacked with `weights_only=True`. `device`: where the collective runs (the CUDA device
    under NCCL). Single process: `[obj]`.
    """
    if not dist.is_distributed():
        return [obj]
    data = torch.frombuffer(bytearray(pack(obj)), dtype=torch.uint8)
    length = torch.tensor([data.numel()], dtype=torch.long, device=device)
    lengths = dist.all_gather_nograd(length).cpu()  # (world,)
    padded = torch.zeros(int(lengths.max()), dtype=torch.uint8)
    padded[: data.numel()] = data
    parts = dist.all_gather_nograd(padded.unsqueeze(0).to(device)).cpu()  # (world, max_len)
    return [unpack(parts[i, : int(n)].numpy().tobytes()) for i, n in enumerate(lengths.tolist())]


def checkpoint_files(*, model_state: dict[str, Any], optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler | None, schedule: dict[str, Any], step: int,
                     epoch: int, nonfinite: int, rank_states: list[dict[str, Any]]
                     ) -> dict[str, bytes]:
    """The files of one checkpoint: {"state.pt": ..., "ranks.pt": ...}."""
    state = {"model": model_state, "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "schedule": schedule, "step": step, "epoch": epoch,
             "world_size": len(rank_states), "nonfinite": nonfinite}
    return {"state.pt": pack(state), "ranks.pt": pack(rank_states)}
