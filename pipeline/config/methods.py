"""Config sections of the self-supervised method switch: [method], [simclr], [moco_v3].

`method.name` picks the method built by `pipeline.model.build_method`; each method reads
only its own section (`moco_v2` reads [moco], as before). The dataclasses are fields of
`pipeline.config.Config`; `validate_methods` is called from `pipeline.config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pipeline.config.sections import Config


@dataclass
class MethodConfig:
    name: Literal["moco_v2", "simclr", "moco_v3"] = "moco_v2"


@dataclass
class SimclrConfig:
    """SimCLR (Chen et al. 2020): projection MLP + NT-Xent over the global batch."""

    dim: int = 128  # projection output
    hidden_dim: int = 2048  # projection hidden width (0 = the backbone's feature_dim)
    layers: int = 2  # Linear layers in the projection MLP (>= 1)
    bn: bool = True  # BatchNorm1d after each hidden Linear of the projection
    temperature: float = 0.5


@dataclass
class MocoV3Config:
    """MoCo v3 (Chen, Xie, He 2021): momentum encoder, predictor, in-batch keys, no queue."""

    dim: int = 256  # projection / prediction output
    mlp_dim: int = 4096  # hidden width of projector and predictor
    proj_layers: int = 3  # Linear layers in the projector (paper: 3 for ViT, 2 for ResNet)
    pred_layers: int = 2  # Linear layers in the predictor (0 = no predictor, an ablation)
    momentum: float = 0.99  # m (cosine-increased to 1 when momentum_cosine)
    momentum_cosine: bool = True
    temperature: float = 0.2  # tau; the loss is scaled by 2 * tau


def validate_methods(cfg: Config) -> None:
    """Range rules of [method], [simclr], [moco_v3] and the optim/model keys they add."""
    from pipeline.config.sections import ConfigError

    def need(cond: bool, key: str, value: Any, rule: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {value!r} {rule}")

    s, v3, o, m = cfg.simclr, cfg.moco_v3, cfg.optim, cfg.model
    need(s.dim >= 1, "simclr.dim", s.dim, "must be >= 1")
    need(s.hidden_dim >= 0, "simclr.hidden_dim", s.hidden_dim, "must be >= 0 (0 = feature_dim)")
    need(s.layers >= 1, "simclr.layers", s.layers, "must be >= 1")
    need(s.temperature > 0, "simclr.temperature", s.temperature, "must be > 0")
    need(v3.dim >= 1, "moco_v3.dim", v3.dim, "must be >= 1")
    need(v3.mlp_dim >= 1, "moco_v3.mlp_dim", v3.mlp_dim, "must be >= 1")
    need(v3.proj_layers >= 1, "moco_v3.proj_layers", v3.proj_layers, "must be >= 1")
    need(v3.pred_layers >= 0, "moco_v3.pred_layers", v3.pred_layers, "must be >= 0")
    need(0.0 <= v3.momentum < 1.0, "moco_v3.momentum", v3.momentum, "must be in [0, 1)")
    need(v3.temperature > 0, "moco_v3.temperature", v3.temperature, "must be > 0")
    need(o.lars_eta > 0, "optim.lars_eta", o.lars_eta, "must be > 0")
    need(0.0 <= o.beta2 < 1.0, "optim.beta2", o.beta2, "must be in [0, 1)")
    if m.arch.startswith("vit"):
        need(2 <= m.patch_size <= cfg.data.image_size, "model.patch_size", m.patch_size,
             f"must be in [2, data.image_size={cfg.data.image_size}]")
        need(cfg.data.image_size % m.patch_size == 0, "model.patch_size", m.patch_size,
             f"must divide data.image_size={cfg.data.image_size}")
