"""`Trainer`: one rank's model, optimizer, schedules, AMP and non-finite guard.

    trainer = build_trainer(cfg, steps_per_epoch=spe, device=dev, rank=r)
    stats = trainer.step(view1, view2)          # uint8 (B, C, H, W) reader views
    state = trainer.state_dict(); trainer.load_state_dict(state)

`step` augments both views on the device (seeded per-rank generator), sets the LR and MoCo
momentum of the current step from the schedules, runs forward/backward (DDP when a process
group exists), and agrees with the other ranks in ONE small all-reduce on (loss, acc1,
non-finite flag, stop flag, corrupt count): all ranks skip a non-finite step together and
stop together. The state holds everything a bitwise-exact resume needs except the data
cursor (the Loader's) and the RNG states (`rng_state`, per rank).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline import dist
from pipeline.train.lr_schedule import LrSchedule, momentum_at, set_lr, warmup_steps_for

if TYPE_CHECKING:
    from pipeline.config import Config


class NonFiniteLossError(RuntimeError):
    """More than `train.max_nonfinite` steps had a non-finite loss."""


@dataclass(frozen=True)
class StepStats:
    """The outcome of one step, agreed by all ranks (means over ranks; corrupt summed)."""

    step: int  # steps done after this one
    loss: float  # nan-free mean loss; 0.0 when skipped
    acc1: float
    skipped: bool  # non-finite loss on some rank: no update
    stop: bool  # some rank asked to stop
    corrupt: float  # corrupt samples met so far, all ranks
    lr: float
    momentum: float
    queue_fill: float


def amp_setup(device: torch.device, enabled: bool) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler): bf16 on CUDA that supports it, else fp16
    with loss scaling; nothing on CPU."""
    if not enabled or device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


class Trainer:
    """See the module docstring. `model`: a method from `pipeline.model.build_method`
    (forward(x1, x2) -> (loss, stats), set_momentum, .momentum, .backbone)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 lr_schedule: LrSchedule, momentum: float, momentum_cosine: bool = False,
                 device: torch.device, amp: bool = False, grad_clip: float = 0.0,
                 max_nonfinite: int = 10,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 seed: int = 0, rank: int = 0) -> None:
        self.model, self.optimizer, self.device = model, optimizer, device
        self.lr_schedule = lr_schedule
        self.momentum_base, self.momentum_cosine = momentum, momentum_cosine
        self.grad_clip, self.max_nonfinite = grad_clip, max_nonfinite
        self.augment = augment
        self.amp_dtype, use_scaler = amp_setup(device, amp)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank)
        self.steps_done, self.nonfinite = 0, 0
        self._ddp: nn.Module | None = None

    @property
    def total_steps(self) -> int:
        return self.lr_schedule.total_steps

    def _views(self, v: torch.Tensor) -> torch.Tensor:
        x = v.to(self.device, non_blocking=True)
        if self.augment is not None:
            x = self.augment(x, self.gen)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def step(self, view1: torch.Tensor, view2: torch.Tensor, *, stop: bool = False,
             corrupt: float = 0.0) -> StepStats:
        """One optimisation step on a batch of view pairs (B, C, H, W); see the module doc.

        stop / corrupt: this rank's stop request and corrupt-sample count (all-reduced).
        Raises NonFiniteLossError after more than `max_nonfinite` skipped steps.
        """
        if self._ddp is None:  # after any load_state_dict: DDP broadcasts rank 0's weights
            self._ddp = dist.wrap_ddp(self.model)
        x1, x2 = self._views(view1), self._views(view2)
        at = self.steps_done
        set_lr(self.optimizer, self.lr_schedule(at))
        self.model.set_momentum(momentum_at(at, self.total_steps, self.momentum_base,
                                            self.momentum_cosine))
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None):
            loss, stats = self._ddp(x1, x2)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        dev = self.device
        vec = torch.stack([loss.detach().float(), stats["acc1"].detach().float().to(dev),
                           (~torch.isfinite(loss.detach())).float(),
                           torch.tensor(float(stop), device=dev),
                           torch.tensor(float(corrupt), device=dev)])
        world = dist.world_size()
        # note: CPU-GPU sync point (5 scalars), so all ranks agree on skip / stop.
        g = (dist.all_reduce_mean(vec)
             * torch.tensor([1, 1, world, world, world], device=dev)).tolist()
        skipped = g[2] > 0
        if skipped:
            self.nonfinite += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.nonfinite > self.max_nonfinite:
                raise NonFiniteLossError(
                    f"train.max_nonfinite: {self.nonfinite} steps had a non-finite loss "
                    f"(last at step {at}); lower optim.lr or enable optim.grad_clip")
        else:
            self._update()
        self.steps_done = at + 1
        fill = stats.get("queue_fill", 0.0)
        return StepStats(step=self.steps_done, loss=0.0 if skipped else g[0], acc1=g[1],
                         skipped=skipped, stop=g[3] > 0, corrupt=g[4],
                         lr=float(self.optimizer.param_groups[0]["lr"]),
                         momentum=float(self.model.momentum), queue_fill=float(fill))

    def _update(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """{"model" (query + key encoders, heads, queue, ptr), "optimizer", "scaler",
        "schedule", "step", "nonfinite"}: identical on every rank (see `sync_buffers`)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "schedule": self.lr_schedule.state_dict(), "step": self.steps_done,
                "nonfinite": self.nonfinite}

    def load_state_dict(self, state: dict[str, Any], *, restore_schedule: bool = True) -> None:
        """Restore `state_dict()`; the saved LR schedule replaces the configured one unless
        `restore_schedule` is False (a resume the user allowed to change the config)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if restore_schedule and state.get("schedule"):
            self.lr_schedule = LrSchedule(**state["schedule"])
        self.steps_done, self.nonfinite = int(state["step"]), int(state["nonfinite"])

    def sync_buffers(self) -> None:
        """Average BN running statistics over ranks (DDP keeps them per rank), so rank 0's
        model state is every rank's: before a checkpoint and before an evaluation."""
        dist.average_bn_stats(self.model)

    def weights_finite(self) -> bool:
        """True when every floating tensor of the model state is finite."""
        return all(bool(torch.isfinite(v).all()) for v in self.model.state_dict().values()
                   if torch.is_floating_point(v))


def total_steps_for(cfg: Config, steps_per_epoch: int) -> int:
    """Steps of the run: `train.epochs` epochs, capped by `train.max_steps` (0 = no cap)."""
    t = cfg.train
    full = t.epochs * steps_per_epoch
    return full if t.max_steps == 0 else min(full, t.max_steps)


def build_trainer(cfg: Config, *, steps_per_epoch: int, device: torch.device,
                  rank: int = 0) -> Trainer:
    """The Trainer of `cfg` (model/moco/optim/train/augment sections): identical initial
    weights on every rank (seeded by `train.seed`); deterministic algorithms on CPU."""
    from pipeline.augment import BatchAugment
    from pipeline.model import build_method, method_momentum
    from pipeline.train.optim import build_optimizer

    t, o = cfg.train, cfg.optim
    if steps_per_epoch < 1:
        raise ValueError(f"data.train: 0 steps per epoch for a global batch of "
                         f"{cfg.global_batch}")
    torch.manual_seed(t.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_method(cfg.model, cfg.moco, in_channels=cfg.data.channels, seed=t.seed,
                         method=cfg.method, simclr=cfg.simclr, moco_v3=cfg.moco_v3).to(device)
    momentum, momentum_cosine = method_momentum(cfg.moco, method=cfg.method,
                                                moco_v3=cfg.moco_v3)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(model, o, lr=cfg.scaled_lr)
    total = total_steps_for(cfg, steps_per_epoch)
    schedule = LrSchedule(cfg.scaled_lr, total,
                          warmup_steps_for(o.warmup_epochs, steps_per_epoch, total), o.schedule)
    return Trainer(model, optimizer, lr_schedule=schedule, momentum=momentum,
                   momentum_cosine=momentum_cosine, device=device, amp=t.amp,
                   grad_clip=o.grad_clip, max_nonfinite=t.max_nonfinite,
                   augment=BatchAugment(cfg.augment, cfg.data.channels), seed=t.seed, rank=rank)
