"""Optimizers: parameter groups and the optimizer named by `optim.name` (sgd, lars, adamw)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from pipeline.config import OptimConfig


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Trainable params; with `no_decay_bn_bias`, 1-d params (BN, biases) get no weight decay
    (and, under LARS, no trust-ratio adaptation: group key `lars_exclude`)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if cfg.no_decay_bn_bias and p.ndim <= 1 else decay).append(p)
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017; SimCLR's optimizer).

    Per parameter p with gradient g (weight decay wd folded in: g <- g + wd * p):
        ratio = eta * ||p|| / ||g||   (1 when either norm is 0, or in a `lars_exclude` group)
        v <- momentum * v + ratio * g ;  p <- p - lr * v
    """

    def __init__(self, params: Iterable[Any], *, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, eta: float = 0.001) -> None:
        if lr <= 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS: lr {lr} > 0, momentum {momentum} in [0, 1), weight_decay "
                             f"{weight_decay} >= 0 and eta {eta} > 0 are required")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                if not group["lars_exclude"]:
                    p_norm, g_norm = torch.linalg.norm(p), torch.linalg.norm(g)
                    ratio = torch.where((p_norm > 0) & (g_norm > 0),
                                        group["eta"] * p_norm / g_norm, torch.ones_like(p_norm))
                    g = g * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, *, lr: float) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.name` over `param_groups(model, cfg)` at the (already
    scaled) `lr`: sgd (momentum `cfg.momentum`), lars (SGD + trust ratio `cfg.lars_eta`) or
    adamw (betas (`cfg.momentum`, `cfg.beta2`), decoupled weight decay)."""
    groups = param_groups(model, cfg)
    if cfg.name == "sgd":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    if cfg.name == "adamw":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, cfg.beta2))
    raise ValueError(f"optim.name: {cfg.name!r} is not one of sgd, lars, adamw")
