"""ResNet-18/50 with torchvision's module names, so state_dicts load into torchvision.

`resnet18()` / `resnet50()` with no arguments have exactly torchvision's layout (7x7 stride-2
stem, 3x3 max-pool, 3 input channels, base width 64, v1.5 bottleneck with the stride on the
3x3 conv) *without* the classifier: `fc` is absent (`num_classes=0`, the default), so

    tv = torchvision.models.resnet50()
    missing, unexpected = tv.load_state_dict(ours.state_dict(), strict=False)
    # missing == ["fc.weight", "fc.bias"], unexpected == []

With `num_classes > 0` an `fc` is added and the keys equal torchvision's exactly (strict=True).

`small_images=True` swaps the stem for a 3x3 stride-1 conv and drops the max-pool (the usual
CIFAR variant, for inputs <= 64 px); `in_channels` and the base `width` are free. Both change
only shapes, never key names (the max-pool has no parameters).

Forward: (N, C, H, W) -> (N, feature_dim) pooled backbone features, or (N, num_classes)
logits when `fc` exists (`forward_features` always gives the features).
"""

from __future__ import annotations

import torch
from torch import nn


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs + identity (ResNet-18/34). Keys: conv1 bn1 conv2 bn2 [downsample.0/1]."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, v1.5) -> 1x1 (x4) + identity (ResNet-50)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-compatible ResNet trunk; `feature_dim` = 8 * width * block.expansion."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], *,
                 in_channels: int = 3, width: int = 64, small_images: bool = False,
                 num_classes: int = 0) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels: {in_channels} must be >= 1")
        if width < 1:
            raise ValueError(f"width: {width} must be >= 1")
        if num_classes < 0:
            raise ValueError(f"num_classes: {num_classes} must be >= 0 (0 = no fc)")
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers: {layers} must be 4 positive block counts")
        self.in_channels = in_channels
        self._c = width
        if small_images:  # (N, C, H, W) -> (N, w, H, W)
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:  # (N, C, H, W) -> (N, w, H/2, W/2) -> max-pool -> (N, w, H/4, W/4)
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = width * 8 * block.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes) if num_classes > 0 else None
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int,
                    blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._c != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._c, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self._c, planes, stride, downsample)]
        self._c = planes * block.expansion
        layers += [block(self._c, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, feature_dim)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input: expected (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 8w*e, h, w)
        return torch.flatten(self.avgpool(x), 1)  # (N, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        return feats if self.fc is None else self.fc(feats)


def resnet18(*, in_channels: int = 3, width: int = 64, small_images: bool = False,
             num_classes: int = 0) -> ResNet:
    """ResNet-18 (BasicBlock x [2, 2, 2, 2]); feature_dim = 8 * width (512 by default)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], in_channels=in_channels, width=width,
                  small_images=small_images, num_classes=num_classes)


def resnet50(*, in_channels: int = 3, width: int = 64, small_images: bool = False,
             num_classes: int = 0) -> ResNet:
    """ResNet-50 (Bottleneck x [3, 4, 6, 3]); feature_dim = 32 * width (2048 by default)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], in_channels=in_channels, width=width,
                  small_images=small_images, num_classes=num_classes)
