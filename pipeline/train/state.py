"""What a checkpoint holds, and how each rank's part reaches rank 0.

`state.pt`  (identical on every rank, written by rank 0): `Trainer.state_dict()`
    {"model": MoCo state_dict (query + key encoders, heads, queue, ptr, step counter),
     "optimizer": SGD state_dict, "scaler": GradScaler state_dict or None,
     "schedule": LR schedule parameters (restored on resume), "step": int, "nonfinite": int}
    + "world_size": int, "meta": `run_fingerprint` (manifest sha, training-config hash)
`ranks.pt`  (one entry per rank, gathered to rank 0):
    [{"loader": Loader.state_dict(), "rng": rng_state(augment generator)}, ...]

RNG states are stored as tensors, ints and lists only, so checkpoints load with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import numpy as np
import torch

from pipeline import dist
from pipeline.config import ConfigError
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


def checkpoint_files(state: dict[str, Any], rank_states: list[dict[str, Any]],
                     meta: dict[str, Any] | None = None) -> dict[str, bytes]:
    """The files of one checkpoint: {"state.pt": Trainer.state_dict() + world_size + meta,
    "ranks.pt": every rank's loader cursor and RNG states}."""
    full = {**state, "world_size": len(rank_states), "meta": dict(meta or {})}
    return {"state.pt": pack(full), "ranks.pt": pack(rank_states)}


# Config keys whose change makes a resumed run a different run (data, model, recipe, world).
TRAINING_KEYS = ("data.train", "data.train_shards", "data.image_size", "data.channels",
                 "augment.", "model.", "moco.", "optim.", "train.epochs", "train.max_steps",
                 "train.per_worker_batch", "train.seed", "ingest.readers_per_worker",
                 "ingest.shuffle_window", "ray.num_workers")


def run_fingerprint(flat_config: dict[str, Any], manifest_sha: str) -> dict[str, Any]:
    """What a checkpoint records about its run: {"manifest_sha", "config_sha", "config"}
    where `config` holds the training-relevant keys of `Config.flat()` (`TRAINING_KEYS`)."""
    relevant = {k: v for k, v in sorted(flat_config.items())
                if any(k == p or (p.endswith(".") and k.startswith(p)) for p in TRAINING_KEYS)}
    text = json.dumps(relevant, sort_keys=True, default=str)
    return {"manifest_sha": manifest_sha, "config": relevant,
            "config_sha": hashlib.sha256(text.encode()).hexdigest()}


def changed_keys(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints: "data.manifest" and/or config keys (a saved
    fingerprint of an older checkpoint without one differs in nothing)."""
    if not saved:
        return []
    out = []
    if saved.get("manifest_sha") != now.get("manifest_sha"):
        out.append("data.manifest")
    if saved.get("config_sha") != now.get("config_sha"):
        old, new = saved.get("config") or {}, now.get("config") or {}
        out += sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return out


class ResumeMismatchError(ConfigError):
    """The checkpoint to resume was written for other data or another config."""


def check_resume(saved: dict[str, Any], now: dict[str, Any], *, step: int,
                 allow: bool) -> list[str]:
    """The changed keys between the checkpoint's fingerprint and this run's; raises
    ResumeMismatchError (one line) when something changed and `allow` is False."""
    changed = changed_keys(saved, now)
    if changed and not allow:
        raise ResumeMismatchError(
            f"train.allow_changed_resume: checkpoint step {step} was written with other "
            f"{', '.join(changed[:8])}; resume with the original config/data, or set "
            f"train.allow_changed_resume = true")
    return changed
