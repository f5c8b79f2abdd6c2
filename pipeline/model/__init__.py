"""Encoders (ResNets, a small CNN, small ViTs), the methods (MoCo v2, SimCLR, MoCo v3), losses.

    from pipeline.model import build_encoder, MoCo
    encoder = build_encoder(cfg.model, in_channels=cfg.data.channels)  # .feature_dim
    moco = MoCo(encoder, cfg.moco, seed=cfg.train.seed)
    loss, stats = moco(view1, view2)        # momentum update, keys, InfoNCE, enqueue
    moco.backbone                            # the query encoder to export (no head)
"""

from __future__ import annotations

from torch import nn

from pipeline.config import MocoConfig, ModelConfig
from pipeline.config.methods import MethodConfig, MocoV3Config, SimclrConfig
from pipeline.model.bn import SplitBatchNorm2d, convert_split_bn
from pipeline.model.heads import mlp_head
from pipeline.model.loss import in_batch_ctr, info_nce, nt_xent
from pipeline.model.moco import MoCo, momentum_update, projection_head
from pipeline.model.moco_v3 import MoCoV3
from pipeline.model.queue import KeyQueue
from pipeline.model.resnet import ResNet, resnet18, resnet50
from pipeline.model.simclr import SimCLR
from pipeline.model.small_cnn import SmallCNN, small_cnn
from pipeline.model.vit import VisionTransformer, vit_small, vit_tiny


def build_encoder(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """The backbone named by `cfg.arch`: (N, in_channels, H, W) -> (N, .feature_dim).

    small_cnn: first width `cfg.width`, final average pooling to `cfg.pool_grid` squared cells,
    feature_dim 4 * width * pool_grid**2 (`small_images` is implied).
    resnet18 / resnet50: base width `cfg.width` (64 = torchvision), 3x3 stem without max-pool
    when `cfg.small_images`; no `fc` (torchvision keys minus fc.weight / fc.bias).
    vit_tiny / vit_small: patches of `cfg.patch_size`, feature_dim 192 / 384 ([CLS] token).
    """
    if in_channels < 1:
        raise ValueError(f"in_channels: {in_channels} must be >= 1")
    if cfg.arch == "small_cnn":
        return small_cnn(in_channels=in_channels, width=cfg.width, pool_grid=cfg.pool_grid)
    if cfg.arch == "resnet18":
        return resnet18(in_channels=in_channels, width=cfg.width, small_images=cfg.small_images)
    if cfg.arch == "resnet50":
        return resnet50(in_channels=in_channels, width=cfg.width, small_images=cfg.small_images)
    if cfg.arch == "vit_tiny":
        return vit_tiny(in_channels=in_channels, patch_size=cfg.patch_size)
    if cfg.arch == "vit_small":
        return vit_small(in_channels=in_channels, patch_size=cfg.patch_size)
    raise ValueError(f"model.arch: {cfg.arch!r} is not one of small_cnn, resnet18, resnet50, "
                     "vit_tiny, vit_small")


def build_method(model: ModelConfig, moco: MocoConfig, *, in_channels: int, seed: int,
                 method: MethodConfig | None = None, simclr: SimclrConfig | None = None,
                 moco_v3: MocoV3Config | None = None) -> nn.Module:
    """The self-supervised method named by `method.name` around a fresh backbone.

    moco_v2 (default, also when `method` is None) reads `moco`; simclr reads `simclr`;
    moco_v3 reads `moco_v3` (None -> the section's defaults). Every method is a plain
    nn.Module with the same small surface, which the Trainer uses:
        forward(view1, view2) -> (loss, stats)   # stats: {"acc1", "pos_sim", "queue_fill",
                                                  #   "momentum"} tensors; one whole step
        set_momentum(m) / .momentum               # momentum-encoder methods (SimCLR: no-op)
        reset_momentum_encoder()                  # target <- online encoder (warm start)
        backbone -> nn.Module                     # the encoder that is exported
    `seed` fixes MoCo v2's shuffle permutations; the others draw no random numbers in forward.
    """
    name = "moco_v2" if method is None else method.name
    encoder = build_encoder(model, in_channels)
    if name == "moco_v2":
        return MoCo(encoder, moco, seed=seed)
    if name == "simclr":
        return SimCLR(encoder, simclr or SimclrConfig())
    if name == "moco_v3":
        return MoCoV3(encoder, moco_v3 or MocoV3Config())
    raise ValueError(f"method.name: {name!r} is not one of moco_v2, simclr, moco_v3")


def method_momentum(moco: MocoConfig, *, method: MethodConfig | None = None,
                    moco_v3: MocoV3Config | None = None) -> tuple[float, bool]:
    """(base momentum, cosine increase to 1?) of the chosen method, for the Trainer's
    schedule: moco_v2 -> moco.momentum/momentum_cosine, moco_v3 -> its section's, simclr ->
    (0.0, False) (ignored by its set_momentum)."""
    name = "moco_v2" if method is None else method.name
    if name == "moco_v3":
        v3 = moco_v3 or MocoV3Config()
        return v3.momentum, v3.momentum_cosine
    if name == "simclr":
        return 0.0, False
    return moco.momentum, moco.momentum_cosine


__all__ = [
    "KeyQueue", "MoCo", "MoCoV3", "ResNet", "SimCLR", "VisionTransformer", "in_batch_ctr",
    "method_momentum", "mlp_head", "nt_xent", "vit_small", "vit_tiny", "SmallCNN", "SplitBatchNorm2d", "build_encoder", "build_method",
    "convert_split_bn", "info_nce", "momentum_update", "projection_head", "resnet18",
    "resnet50", "small_cnn",
]
