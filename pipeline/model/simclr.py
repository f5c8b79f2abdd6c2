"""SimCLR (Chen et al. 2020): two views, projection MLP, NT-Xent over the global batch.

One training step, for views x1, x2 of the same n images (this rank's batch):

    h = f(cat[x1, x2])                         # (2n, F) both views in one backbone pass
    z1, z2 = normalize(g(h)).split(n)          # (n, dim) each
    Z1, Z2 = all_gather_with_grad(z1, z2)      # (N, dim) each, N = world * n, rank order
    loss = NT-Xent(z1, z2 vs Z1, Z2)           # each anchor: 1 positive, 2N - 2 negatives

The gather keeps the gradient (`pipeline.dist.all_gather_with_grad`), so with DDP's gradient
averaging the update equals that of one process on the whole global batch. In one process
the gather is the identity. No momentum encoder: `set_momentum` is a no-op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import dist
from pipeline.config.methods import SimclrConfig
from pipeline.model.heads import mlp_head
from pipeline.model.loss import nt_xent


class SimCLR(nn.Module):
    """SimCLR around a backbone `encoder` ((N, C, H, W) -> (N, encoder.feature_dim))."""

    def __init__(self, encoder: nn.Module, cfg: SimclrConfig) -> None:
        super().__init__()
        feature_dim = getattr(encoder, "feature_dim", None)
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError("SimCLR: encoder must expose a positive int .feature_dim "
                             f"(got {feature_dim!r})")
        if not cfg.temperature > 0:
            raise ValueError(f"simclr.temperature: {cfg.temperature} must be > 0")
        if cfg.hidden_dim < 0:
            raise ValueError(f"simclr.hidden_dim: {cfg.hidden_dim} must be >= 0")
        self.encoder = encoder
        self.head = mlp_head(feature_dim, cfg.hidden_dim or feature_dim, cfg.dim, cfg.layers,
                             bn=cfg.bn)
        self.temperature = float(cfg.temperature)
        self.momentum = 0.0  # no momentum encoder

    @property
    def backbone(self) -> nn.Module:
        """The encoder without the projection head: the network to export and evaluate."""
        return self.encoder

    def reset_momentum_encoder(self) -> None:
        """No momentum encoder in SimCLR: nothing to reset (same surface as the MoCos)."""

    def set_momentum(self, m: float) -> None:
        """No momentum encoder in SimCLR: accepted and ignored (the Trainer calls it)."""
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"set_momentum: m = {m} must be in [0, 1]")

    def forward(self, view1: torch.Tensor, view2: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One SimCLR step on this rank's views (n, C, H, W) each; returns (loss, stats).

        stats (detached): acc1 (the positive has the top logit among the 2N - 1, this rank's
        anchors), pos_sim (mean z1 . z2), queue_fill (1.0: no queue, every negative is real),
        momentum (0.0).
        """
        if view1.shape != view2.shape or view1.dim() != 4:
            raise ValueError(f"SimCLR.forward: views must be (n, C, H, W) of equal shape; got "
                             f"{tuple(view1.shape)} and {tuple(view2.shape)}")
        n = view1.shape[0]
        z = F.normalize(self.head(self.encoder(torch.cat([view1, view2]))), dim=1)  # (2n, dim)
        z1, z2 = z[:n], z[n:]
        all1, all2 = dist.all_gather_with_grad(z1), dist.all_gather_with_grad(z2)  # (N, dim)
        loss, acc1 = nt_xent(z1, z2, self.temperature, all1=all1, all2=all2,
                             offset=dist.rank() * n)
        stats = {"acc1": acc1, "pos_sim": (z1.detach() * z2.detach()).sum(dim=1).mean(),
                 "queue_fill": torch.tensor(1.0), "momentum": torch.tensor(0.0)}
        return loss, stats
