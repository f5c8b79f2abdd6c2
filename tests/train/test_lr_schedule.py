"""LR / momentum schedules: values at the edges, monotonicity, validation."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.train.lr_schedule import LrSchedule, momentum_at, set_lr, warmup_steps_for

pytestmark = pytest.mark.unit


def test_warmup_is_linear_then_cosine_reaches_zero() -> None:
    s = LrSchedule(base_lr=0.4, total_steps=100, warmup_steps=10)
    assert [round(s(i), 6) for i in range(3)] == [0.04, 0.08, 0.12]
    assert s(9) == pytest.approx(0.4)
    assert s(10) == pytest.approx(0.4)  # cosine starts at the peak
    mid = 10 + 45
    assert s(mid) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    values = [s(i) for i in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert 0 < s(99) < 0.001
    assert s(1000) == s(99)  # clamped past the end


def test_constant_and_no_warmup() -> None:
    s = LrSchedule(base_lr=0.1, total_steps=5, warmup_steps=0, kind="constant")
    assert [s(i) for i in range(5)] == [0.1] * 5


@pytest.mark.parametrize("kwargs, key", [
    ({"base_lr": 0.0, "total_steps": 5}, "base_lr"),
    ({"base_lr": 0.1, "total_steps": 0}, "total_steps"),
    ({"base_lr": 0.1, "total_steps": 5, "warmup_steps": 6}, "warmup_steps"),
])
def test_validation_names_the_argument(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        LrSchedule(**kwargs)


def test_warmup_steps_for_rounds_and_caps() -> None:
    assert warmup_steps_for(0.1, 57, 1000) == 6
    assert warmup_steps_for(5.0, 100, 120) == 120


def test_momentum_cosine_goes_from_base_to_one() -> None:
    assert momentum_at(0, 100, 0.99, cosine=False) == 0.99
    assert momentum_at(70, 100, 0.99, cosine=False) == 0.99
    assert momentum_at(0, 100, 0.99, cosine=True) == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99, cosine=True) == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99, cosine=True) == pytest.approx(1.0)


def test_set_lr_sets_every_group() -> None:
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1]}, {"params": [p2], "lr_scale": 0.5}], lr=1.0)
    set_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.1]
