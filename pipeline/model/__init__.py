"""Encoders (torchvision-compatible ResNets, a small CNN), the MoCo v2 module, queue and loss.

    from pipeline.model import build_encoder, MoCo
    encoder = build_encoder(cfg.model, in_channels=cfg.data.channels)  # .feature_dim
    moco = MoCo(encoder, cfg.moco, seed=cfg.train.seed)
    loss, stats = moco(view1, view2)        # momentum update, keys, InfoNCE, enqueue
    moco.backbone                            # the query encoder to export (no head)
"""

from __future__ import annotations

from torch import nn

from pipeline.config import MocoConfig, ModelConfig
from pipeline.model.bn import SplitBatchNorm2d, convert_split_bn
from pipeline.model.loss import info_nce
from pipeline.model.moco import MoCo, momentum_update, projection_head
from pipeline.model.queue import KeyQueue
from pipeline.model.resnet import ResNet, resnet18, resnet50
from pipeline.model.small_cnn import SmallCNN, small_cnn


def build_encoder(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """The backbone named by `cfg.arch`: (N, in_channels, H, W) -> (N, .feature_dim).

    small_cnn: first width `cfg.width`, final average pooling to `cfg.pool_grid` squared cells,
    feature_dim 4 * width * pool_grid**2 (`small_images` is implied).
    resnet18 / resnet50: base width `cfg.width` (64 = torchvision), 3x3 stem without max-pool
    when `cfg.small_images`; no `fc` (torchvision keys minus fc.weight / fc.bias).
    """
    if in_channels < 1:
        raise ValueError(f"in_channels: {in_channels} must be >= 1")
    if cfg.arch == "small_cnn":
        return small_cnn(in_channels=in_channels, width=cfg.width, pool_grid=cfg.pool_grid)
    if cfg.arch == "resnet18":
        return resnet18(in_channels=in_channels, width=cfg.width, small_images=cfg.small_images)
    if cfg.arch == "resnet50":
        return resnet50(in_channels=in_channels, width=cfg.width, small_images=cfg.small_images)
    raise ValueError(f"model.arch: {cfg.arch!r} is not one of small_cnn, resnet18, resnet50")


def build_method(model: ModelConfig, moco: MocoConfig, *, in_channels: int, seed: int) -> nn.Module:
    """The self-supervised method around a fresh backbone (today: MoCo v2).

    Every method is a plain nn.Module with the same small surface, which the Trainer uses:
        forward(view1, view2) -> (loss, stats)   # stats: {"acc1": tensor, ...}; one whole step
        set_momentum(m) / .momentum               # momentum-encoder methods (else a no-op)
        backbone -> nn.Module                     # the encoder that is exported
    """
    return MoCo(build_encoder(model, in_channels), moco, seed=seed)


__all__ = [
    "KeyQueue", "MoCo", "ResNet", "SmallCNN", "SplitBatchNorm2d", "build_encoder", "build_method",
    "convert_split_bn", "info_nce", "momentum_update", "projection_head", "resnet18",
    "resnet50", "small_cnn",
]
