"""A small, fast ConvNet with BatchNorm for demos and tests (28-64 px inputs, CPU-friendly).

Four conv-BN-ReLU stages: 3x3 stride 1 at `width` channels, then three 3x3 stride-2 convs
at 2x, 4x, 4x `width`, then average pooling to a `pool_grid` x `pool_grid` grid, flattened.
At 28 px: 28 -> 14 -> 7 -> 4 spatial. `pool_grid` 1 is global average pooling (feature_dim
4 * width); 2 keeps the coarse layout of the last map (top/bottom, left/right halves) in
feature_dim 16 * width, which on 28 px Fashion-MNIST gives clearly better kNN accuracy than
global pooling (measured: see jobs/configs/demo.toml); the convolutions cost the same, only
the MoCo head's first layer grows (feature_dim x feature_dim).
"""

from __future__ import annotations

import torch
from torch import nn


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """(N, in_channels, H, W) -> (N, feature_dim), feature_dim = 4 * width * pool_grid**2."""

    def __init__(self, in_channels: int = 1, width: int = 32, pool_grid: int = 1) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels: {in_channels} must be >= 1")
        if width < 1:
            raise ValueError(f"width: {width} must be >= 1")
        if pool_grid < 1:
            raise ValueError(f"pool_grid: {pool_grid} must be >= 1")
        self.in_channels = in_channels
        self.features = nn.Sequential(
            _stage(in_channels, width, 1),  # (N, w, H, W)
            _stage(width, 2 * width, 2),  # (N, 2w, H/2, W/2)
            _stage(2 * width, 4 * width, 2),  # (N, 4w, H/4, W/4)
            _stage(4 * width, 4 * width, 2),  # (N, 4w, H/8, W/8)
        )
        self.pool_grid = pool_grid
        self.pool = nn.AdaptiveAvgPool2d((pool_grid, pool_grid))
        self.feature_dim = 4 * width * pool_grid * pool_grid
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input: expected (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return torch.flatten(self.pool(self.features(x)), 1)  # (N, 4w * grid * grid)


def small_cnn(*, in_channels: int = 1, width: int = 32, pool_grid: int = 1) -> SmallCNN:
    """The small demo/test encoder; feature_dim = 4 * width * pool_grid**2."""
    return SmallCNN(in_channels=in_channels, width=width, pool_grid=pool_grid)
