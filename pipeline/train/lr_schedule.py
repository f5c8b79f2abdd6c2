"""Per-step schedules: linear-warmup + cosine learning rate, cosine-increasing MoCo momentum.

Both are pure functions of the global step (0-based: the step about to be taken), so a
resumed run recomputes exactly the value the uninterrupted run would have used; the
optimizer's LR is set from `lr_at` before every step instead of keeping scheduler state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class LrSchedule:
    """Linear warmup from ~0 to `base_lr` over `warmup_steps`, then cosine (or constant) decay.

    base_lr: the peak LR (already scaled for the global batch).
    total_steps: steps of the whole run (the cosine reaches 0 at `total_steps`).
    warmup_steps: linear ramp length; 0 = start at `base_lr`.
    kind: "cosine" or "constant" (constant keeps `base_lr` after the warmup).
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: Literal["cosine", "constant"] = "cosine"

    def __post_init__(self) -> None:
        if self.base_lr <= 0:
            raise ValueError(f"base_lr: {self.base_lr} must be > 0")
        if self.total_steps < 1:
            raise ValueError(f"total_steps: {self.total_steps} must be >= 1")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"warmup_steps: {self.warmup_steps} must be in [0, total_steps={self.total_steps}]")
        if self.kind not in ("cosine", "constant"):
            raise ValueError(f"kind: {self.kind!r} is not 'cosine' or 'constant'")

    def __call__(self, step: int) -> float:
        """LR for the 0-based `step` (clamped to the last step beyond `total_steps`)."""
        step = min(max(step, 0), self.total_steps - 1)
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.base_lr
        decay_steps = self.total_steps - self.warmup_steps
        progress = (step - self.warmup_steps) / decay_steps  # in [0, 1)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint records (for inspection; the schedule is rebuilt from config)."""
        return {"base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "kind": self.kind}


def warmup_steps_for(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warmup length in steps: round(warmup_epochs * steps_per_epoch), at most `total_steps`."""
    return min(int(round(warmup_epochs * steps_per_epoch)), total_steps)


def momentum_at(step: int, total_steps: int, base: float, cosine: bool) -> float:
    """MoCo key-encoder momentum for the 0-based `step`.

    cosine=False: `base` throughout. cosine=True: increases from `base` to 1.0 along a half
    cosine over the run (BYOL's schedule): m = 1 - (1 - base) * (cos(pi * step / T) + 1) / 2.
    """
    if not cosine:
        return base
    if total_steps < 1:
        raise ValueError(f"total_steps: {total_steps} must be >= 1")
    progress = min(max(step, 0), total_steps) / total_steps
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def set_lr(optimizer: Any, lr: float) -> None:
    """Set every param group's LR (groups may scale it with a `lr_scale` entry)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
