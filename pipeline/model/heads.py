"""MLP heads shared by the methods: SimCLR's projection, MoCo v3's projector and predictor."""

from __future__ import annotations

from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, layers: int, *, bn: bool = True,
             last_bn: bool = False) -> nn.Sequential:
    """(N, in_dim) -> (N, out_dim) with `layers` Linear layers.

    Hidden layers: Linear(bias only without BN) [- BatchNorm1d] - ReLU, at `hidden_dim`.
    `last_bn` appends BatchNorm1d(out_dim, affine=False) after the last Linear (MoCo v3's
    projector). `layers` = 1 is a single Linear(in_dim, out_dim).
    """
    if layers < 1:
        raise ValueError(f"mlp_head: layers {layers} must be >= 1")
    if min(in_dim, hidden_dim, out_dim) < 1:
        raise ValueError(f"mlp_head: dims must be >= 1; got in {in_dim}, hidden {hidden_dim}, "
                         f"out {out_dim}")
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(dim, hidden_dim, bias=not bn))
        if bn:
            mods.append(nn.BatchNorm1d(hidden_dim))
        mods.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)
