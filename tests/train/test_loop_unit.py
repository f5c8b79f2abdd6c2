"""Pure pieces of the train loop: parameter groups, AMP choice, the test fault hook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import OptimConfig
from pipeline.train.loop import amp_setup
from pipeline.train.optim import param_groups

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


def test_fault_hook_fires_once(tmp_path: Path) -> None:
    marker = tmp_path / "fired"
    code = ("from pipeline.train.loop import _fault_hook\n"
            f"_fault_hook('1:5:{marker}', rank=0, step=5)\n"  # other rank: nothing
            f"_fault_hook('1:5:{marker}', rank=1, step=4)\n"  # other step: nothing
            f"_fault_hook('1:5:{marker}', rank=1, step=5)\n"
            "print('survived')\n")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert first.returncode == 1 and "survived" not in first.stdout and marker.exists()
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert second.returncode == 0 and "survived" in second.stdout
