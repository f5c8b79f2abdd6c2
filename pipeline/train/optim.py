"""Optimizers: parameter groups and the optimizer named by the `optim` section."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.config import OptimConfig

def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Trainable params; with `no_decay_bn_bias`, 1-d params (BN, biases) get no weight decay."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if cfg.no_decay_bn_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, *, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum over `param_groups(model, cfg)` at the (already scaled) `lr`."""
    return torch.optim.SGD(param_groups(model, cfg), lr=lr, momentum=cfg.momentum)
