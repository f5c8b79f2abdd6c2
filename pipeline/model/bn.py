"""SplitBatchNorm: simulate N devices' batch statistics in one process.

With `num_splits = S`, a training batch of N samples is cut into S *contiguous* chunks of
N / S samples, and each chunk is normalised with its own mean and variance, exactly as S
DDP ranks with plain BatchNorm would do with rank r holding rows [r * N/S, (r+1) * N/S).
Running statistics are updated with the mean over chunks of each chunk's statistics, which
equals the rank mean of S per-rank running statistics (`dist.average_bn_stats`).

In eval mode (or with S = 1) it is an ordinary BatchNorm2d; the state_dict keys are those of
BatchNorm2d, so a converted encoder still loads into torchvision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed per contiguous chunk of the batch."""

    def __init__(self, num_features: int, num_splits: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        if num_splits < 1:
            raise ValueError(f"num_splits: {num_splits} must be >= 1")
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"SplitBatchNorm2d: expected (N, C, H, W), got {tuple(x.shape)}")
        n, c, h, w = x.shape
        if n % s != 0:
            raise ValueError(f"SplitBatchNorm2d: batch {n} is not divisible by num_splits {s}")
        # (N, C, H, W) -> (S, N/S, C, H, W) -> (N/S, S*C, H, W): channel block j of the new
        # tensor holds chunk j, so one batch_norm call normalises each chunk separately.
        xs = x.view(s, n // s, c, h, w).transpose(0, 1).reshape(n // s, s * c, h, w)
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        momentum = self.momentum
        if momentum is None:  # cumulative moving average, as nn.BatchNorm2d
            momentum = 1.0 / float(self.num_batches_tracked.item())
        running_mean = running_var = None
        if self.track_running_stats:
            running_mean = self.running_mean.repeat(s)  # (S*C,)
            running_var = self.running_var.repeat(s)
        weight = self.weight.repeat(s) if self.weight is not None else None
        bias = self.bias.repeat(s) if self.bias is not None else None
        ys = F.batch_norm(xs, running_mean, running_var, weight, bias, True, momentum, self.eps)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():  # chunk-mean of the per-chunk updated statistics
                self.running_mean.copy_(running_mean.view(s, c).mean(dim=0))
                self.running_var.copy_(running_var.view(s, c).mean(dim=0))
        # (N/S, S*C, H, W) -> (N/S, S, C, H, W) -> (S, N/S, C, H, W) -> (N, C, H, W)
        return ys.reshape(n // s, s, c, h, w).transpose(0, 1).reshape(n, c, h, w)


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every nn.BatchNorm2d in `module` (in place) by SplitBatchNorm2d with the same
    parameters and statistics; returns `module` (or the replacement if `module` is a BN)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SplitBatchNorm2d):
        new = SplitBatchNorm2d(module.num_features, num_splits, eps=module.eps,
                               momentum=module.momentum, affine=module.affine,
                               track_running_stats=module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        tensors = list(module.parameters()) + list(module.buffers())
        return new.to(tensors[0].device) if tensors else new
    for name, child in module.named_children():
        setattr(module, name, convert_split_bn(child, num_splits))
    return module
