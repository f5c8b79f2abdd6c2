"""MoCo v3 (Chen, Xie, He 2021): momentum encoder, predictor, in-batch keys of all ranks.

One training step, for views x1, x2 of the same n images (this rank's batch):

    momentum_update(f_q, g_q -> f_k, g_k, m)      # EMA, no gradient
    q1, q2 = normalize(h(g_q(f_q(x1|x2))))        # (n, dim) queries: projector + predictor
    k1, k2 = normalize(g_k(f_k(x1|x2)))           # (n, dim) keys, no gradient
    K1, K2 = all_gather_nograd(k1, k2)            # (N, dim), N = world * n, rank order
    loss = ctr(q1, K2) + ctr(q2, K1)              # ctr = 2 tau * CE(q K^T / tau, own index)

No queue: the negatives of a query are the other N - 1 keys of the global batch. The key
gather carries no gradient (keys come from the momentum encoder), so DDP's averaged
gradient equals that of one process on the global batch. BatchNorm in the heads is per
rank here (the paper uses SyncBN; `dist.convert_sync_batchnorm` where CUDA allows).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import dist
from pipeline.config.methods import MocoV3Config
from pipeline.model.heads import mlp_head
from pipeline.model.loss import in_batch_ctr
from pipeline.model.moco import MomentumEncoder, momentum_update


class MoCoV3(MomentumEncoder, nn.Module):
    """MoCo v3 around a backbone `encoder_q` ((N, C, H, W) -> (N, encoder_q.feature_dim)).

    State: encoder_q / proj_q / predictor (trained), encoder_k / proj_k (momentum copies,
    requires_grad=False).
    """

    def __init__(self, encoder_q: nn.Module, cfg: MocoV3Config) -> None:
        super().__init__()
        feature_dim = getattr(encoder_q, "feature_dim", None)
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError("MoCoV3: encoder_q must expose a positive int .feature_dim "
                             f"(got {feature_dim!r})")
        if not cfg.temperature > 0:
            raise ValueError(f"moco_v3.temperature: {cfg.temperature} must be > 0")
        if not 0.0 <= cfg.momentum <= 1.0:
            raise ValueError(f"moco_v3.momentum: {cfg.momentum} must be in [0, 1]")
        self.encoder_q = encoder_q
        self.proj_q = mlp_head(feature_dim, cfg.mlp_dim, cfg.dim, cfg.proj_layers, last_bn=True)
        self.predictor: nn.Module = (mlp_head(cfg.dim, cfg.mlp_dim, cfg.dim, cfg.pred_layers)
                                     if cfg.pred_layers > 0 else nn.Identity())
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.proj_k = copy.deepcopy(self.proj_q)
        for p in list(self.encoder_k.parameters()) + list(self.proj_k.parameters()):
            p.requires_grad_(False)
        self.momentum = float(cfg.momentum)
        self.temperature = float(cfg.temperature)

    @property
    def backbone(self) -> nn.Module:
        """The query encoder without heads: the network to export and evaluate."""
        return self.encoder_q

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.predictor(self.proj_q(self.encoder_q(x))), dim=1)  # (n, dim)

    @torch.no_grad()
    def _key(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj_k(self.encoder_k(x)), dim=1)  # (n, dim)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One MoCo v3 step on this rank's views (n, C, H, W) each; returns (loss, stats).

        stats (detached): acc1 (mean over both directions of the top-1 of the positive among
        the N keys), pos_sim (mean q . k+), queue_fill (1.0: no queue), momentum.
        """
        if view1.shape != view2.shape or view1.dim() != 4:
            raise ValueError(f"MoCoV3.forward: views must be (n, C, H, W) of equal shape; got "
                             f"{tuple(view1.shape)} and {tuple(view2.shape)}")
        with torch.no_grad():
            momentum_update(self.encoder_q, self.encoder_k, self.momentum)
            momentum_update(self.proj_q, self.proj_k, self.momentum)
        offset = dist.rank() * view1.shape[0]
        q1, q2 = self._query(view1), self._query(view2)
        k1, k2 = self._key(view1), self._key(view2)
        loss12, acc12 = in_batch_ctr(q1, dist.all_gather_nograd(k2), self.temperature,
                                     offset=offset)
        loss21, acc21 = in_batch_ctr(q2, dist.all_gather_nograd(k1), self.temperature,
                                     offset=offset)
        pos_sim = 0.5 * ((q1.detach() * k2).sum(1).mean() + (q2.detach() * k1).sum(1).mean())
        stats = {"acc1": 0.5 * (acc12 + acc21), "pos_sim": pos_sim,
                 "queue_fill": torch.tensor(1.0), "momentum": torch.tensor(self.momentum)}
        return loss12 + loss21, stats
