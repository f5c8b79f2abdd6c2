"""`mocopipe bench train`: throughput of full MoCo steps against a baseline from the same run.

A MoCo step is what the train loop does per batch: forward(view1, view2) (momentum update,
queries with gradient, shuffled keys, InfoNCE, enqueue), backward, SGD step. The baseline is
a plain supervised step of the same encoder (+ a linear classifier, cross-entropy on one view)
at the same batch size: the ratio MoCo / supervised says what MoCo's extra work costs
(key forward, head, queue logits; x2 with the symmetric loss) independently of how fast or
busy the machine is. Inputs are random, already-normalised tensors: augmentation and data
loading are not measured (`mocopipe bench ingest` does that).

Rounds alternate baseline and MoCo, and the median round of each is reported, so a burst of
load from other processes hits both sides alike. Images per CPU-second of this process are
reported too: on a shared machine they estimate what an idle core would do.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import MocoConfig, ModelConfig
from pipeline.model import MoCo, build_encoder


def _time_steps(step: Callable[[], None], steps: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for `steps` calls of `step`."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return time.perf_counter() - start, time.process_time() - cpu


def bench_train(model_cfg: ModelConfig, moco_cfg: MocoConfig, *, image_size: int,
                channels: int, batch: int, steps: int = 10, warmup: int = 2, rounds: int = 3,
                seed: int = 0) -> dict[str, object]:
    """Measure img/s of MoCo steps and of supervised steps of the same encoder (CPU or the
    default device of the inputs: this runs on CPU).

    Returns a JSON-able dict: configuration, `moco_img_s`, `supervised_img_s` (median over
    rounds), per-round values, and `ratio` = moco_img_s / supervised_img_s.
    """
    for name, value, low in (("batch", batch, 2), ("steps", steps, 1), ("warmup", warmup, 0),
                             ("rounds", rounds, 1), ("image_size", image_size, 8)):
        if value < low:
            raise ValueError(f"{name}: {value} must be >= {low}")
    keys_per_step = batch * (2 if moco_cfg.symmetric else 1)
    if moco_cfg.queue_size < keys_per_step:
        raise ValueError(f"moco.queue_size: {moco_cfg.queue_size} is smaller than the "
                         f"{keys_per_step} keys enqueued per step (batch {batch})")
    if moco_cfg.bn == "split" and batch % moco_cfg.bn_splits != 0:
        raise ValueError(f"moco.bn_splits: {moco_cfg.bn_splits} must divide the batch {batch}")

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    v1 = torch.randn(batch, channels, image_size, image_size, generator=g)
    v2 = torch.randn(batch, channels, image_size, image_size, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)

    moco = MoCo(build_encoder(model_cfg, channels), moco_cfg, seed=seed).train()
    moco_opt = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=1e-3,
                               momentum=0.9)
    encoder = build_encoder(model_cfg, channels)
    supervised = nn.Sequential(encoder, nn.Linear(encoder.feature_dim, 10)).train()
    sup_opt = torch.optim.SGD(supervised.parameters(), lr=1e-3, momentum=0.9)

    def moco_step() -> None:
        loss, _ = moco(v1, v2)
        moco_opt.zero_grad(set_to_none=True)
        loss.backward()
        moco_opt.step()

    def supervised_step() -> None:
        loss = F.cross_entropy(supervised(v1), labels)
        sup_opt.zero_grad(set_to_none=True)
        loss.backward()
        sup_opt.step()

    _time_steps(supervised_step, warmup)
    _time_steps(moco_step, warmup)
    sup_rounds, moco_rounds, sup_cpu, moco_cpu = [], [], 0.0, 0.0
    for _ in range(rounds):
        wall, cpu = _time_steps(supervised_step, steps)
        sup_rounds.append(batch * steps / wall)
        sup_cpu += cpu
        wall, cpu = _time_steps(moco_step, steps)
        moco_rounds.append(batch * steps / wall)
        moco_cpu += cpu
    sup_img_s, moco_img_s = statistics.median(sup_rounds), statistics.median(moco_rounds)
    images = batch * steps * rounds
    return {
        "arch": model_cfg.arch, "width": model_cfg.width, "small_images": model_cfg.small_images,
        "image_size": image_size, "channels": channels, "batch": batch, "steps": steps,
        "warmup": warmup, "rounds": rounds, "threads": torch.get_num_threads(),
        "moco": {"bn": moco_cfg.bn, "bn_splits": moco_cfg.bn_splits,
                 "symmetric": moco_cfg.symmetric, "queue_size": moco_cfg.queue_size,
                 "dim": moco_cfg.dim, "mlp": moco_cfg.mlp},
        "params": sum(p.numel() for p in encoder.parameters()),
        "moco_img_s": round(moco_img_s, 2), "supervised_img_s": round(sup_img_s, 2),
        "moco_rounds_img_s": [round(v, 2) for v in moco_rounds],
        "supervised_rounds_img_s": [round(v, 2) for v in sup_rounds],
        "ratio": round(moco_img_s / sup_img_s, 4),
        # Images per CPU-second of this process: on a machine shared with other work this is
        # what one core would do alone (with threads=1; more threads add spin-wait time).
        "moco_img_per_cpu_s": round(images / max(moco_cpu, 1e-9), 2),
        "supervised_img_per_cpu_s": round(images / max(sup_cpu, 1e-9), 2),
        "ratio_cpu": round(sup_cpu / max(moco_cpu, 1e-9), 4),  # same ratio, in CPU time
    }


def format_report(r: dict[str, object]) -> str:
    """Human-readable lines for `bench_train`'s result."""
    m = r["moco"]
    assert isinstance(m, dict)
    stem = ""
    if str(r["arch"]).startswith("resnet"):
        stem = "3x3 stem, " if r["small_images"] else "torchvision stem, "
    return "\n".join([
        f"bench train: {r['arch']} width={r['width']} ({stem}{r['params']:,} params), "
        f"{r['image_size']} px x {r['channels']} ch, batch {r['batch']}, bn={m['bn']}"
        f"{'/' + str(m['bn_splits']) if m['bn'] == 'split' else ''}, "
        f"symmetric={m['symmetric']}, K={m['queue_size']}, {r['threads']} threads",
        f"  {r['rounds']} rounds x {r['steps']} steps (after {r['warmup']} warm-up steps), "
        "median round:",
        f"  supervised fwd/bwd/step (baseline): {r['supervised_img_s']:10.1f} img/s",
        f"  MoCo v2 step:                       {r['moco_img_s']:10.1f} img/s",
        f"  ratio MoCo / supervised:            {r['ratio']:10.3f}",
        f"  per CPU-second of this process: MoCo {r['moco_img_per_cpu_s']:.1f} img, "
        f"supervised {r['supervised_img_per_cpu_s']:.1f} img (ratio {r['ratio_cpu']:.3f})",
    ])
