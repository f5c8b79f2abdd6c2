"""Pure pieces of the trainer: parameter groups, AMP choice."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import OptimConfig
from pipeline.train.optim import param_groups
from pipeline.train.trainer import amp_setup

pytestmark = pytest.mark.unit


def _net() -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    net[3].weight.requires_grad_(False)  # frozen params are left out
    return net


def test_param_groups_without_decay_on_bn_and_bias() -> None:
    groups = param_groups(_net(), OptimConfig(weight_decay=1e-4, no_decay_bn_bias=True))
    decay, no_decay = groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 1, 3, 3)]
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(2,), (4,), (4,), (4,)]


def test_param_groups_default_decays_everything_trainable() -> None:
    (group,) = param_groups(_net(), OptimConfig(weight_decay=5e-4))
    assert len(group["params"]) == 5 and group["weight_decay"] == 5e-4


def test_amp_is_off_on_cpu() -> None:
    assert amp_setup(torch.device("cpu"), True) == (None, False)
    assert amp_setup(torch.device("cpu"), False) == (None, False)
