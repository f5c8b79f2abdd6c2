"""MoCo v2 (He et al. 2020; Chen et al. 2020): query encoder, momentum key encoder, queue.

One training step, for views x1, x2 of the same n images (this rank's batch):

    momentum_update(f_q -> f_k, m)            # EMA of the key encoder, no gradient
    q = normalize(g_q(f_q(x1)))               # (n, dim) queries, with gradient
    k = normalize(g_k(f_k(shuffle(x2))))      # (n, dim) keys, shuffled BN, no gradient
    loss = InfoNCE(q, k, queue)               # logits (n, 1 + K)
    queue.enqueue(all_gather(k))              # (world * n, dim), same on every rank

The module knows nothing of distribution: shuffling, gathering and broadcasting go through
`pipeline.dist`, which does the single-process part of each when there is no process group.
BN modes (`MocoConfig.bn`):
  "shuffle"  keys computed on a batch shuffled across all ranks (per-rank BN statistics never
             pair a query with its own key); in one process the shuffle changes nothing.
  "split"    BatchNorm -> SplitBatchNorm2d(bn_splits) in both encoders, plus the same shuffle:
             one process behaves like bn_splits ranks (global batch = this batch).
  "sync"     SyncBatchNorm in both encoders, no shuffle (CUDA under DDP).
  "none"     plain per-rank BN, no shuffle (an ablation: lets BN leak the positive).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import dist
from pipeline.config import MocoConfig
from pipeline.model.bn import convert_split_bn
from pipeline.model.loss import info_nce
from pipeline.model.queue import KeyQueue


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """EMA of parameters: target <- m * target + (1 - m) * online, in place.

    Parameters are matched by name; buffers (BN running statistics) are not touched: the
    target keeps the statistics of its own forward passes, as in the MoCo reference.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum_update: m = {m} must be in [0, 1]")
    p_on = dict(online.named_parameters())
    p_tg = dict(target.named_parameters())
    if p_on.keys() != p_tg.keys():
        raise ValueError("momentum_update: online and target have different parameter names: "
                         f"{sorted(set(p_on) ^ set(p_tg))[:5]}")
    names = list(p_tg)
    for name in names:
        if p_on[name].shape != p_tg[name].shape:
            raise ValueError(f"momentum_update: {name} has shape {tuple(p_on[name].shape)} "
                             f"online but {tuple(p_tg[name].shape)} in the target")
    targets = [p_tg[n] for n in names]
    torch._foreach_mul_(targets, m)
    torch._foreach_add_(targets, [p_on[n].detach() for n in names], alpha=1.0 - m)


def projection_head(feature_dim: int, dim: int, mlp: bool) -> nn.Module:
    """MoCo v2 head: Linear(F, F) - ReLU - Linear(F, dim) when `mlp`, else Linear(F, dim)."""
    if not mlp:
        return nn.Linear(feature_dim, dim)
    return nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True),
                         nn.Linear(feature_dim, dim))


class MomentumEncoder:
    """The momentum-encoder surface shared by MoCo v2 and v3 (a mixin of nn.Modules that own
    `encoder_q`, `encoder_k` and a float `momentum`)."""

    encoder_q: nn.Module
    encoder_k: nn.Module
    momentum: float

    @torch.no_grad()
    def reset_momentum_encoder(self) -> None:
        """encoder_k <- encoder_q (weights and buffers), as at construction; e.g. after a warm
        start loaded new backbone weights into `backbone`."""
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())

    def set_momentum(self, m: float) -> None:
        """Set the EMA coefficient used from the next forward (cosine schedule hook)."""
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"set_momentum: m = {m} must be in [0, 1]")
        self.momentum = float(m)


class MoCo(MomentumEncoder, nn.Module):
    """MoCo v2 around a backbone `encoder_q` ((N, C, H, W) -> (N, encoder_q.feature_dim)).

    State (all in `state_dict`): encoder_q / head_q (trained), encoder_k / head_k (momentum
    copies, requires_grad=False), queue.{queue, ptr, count}, and `step` (forward calls so far;
    it seeds the shuffle permutation, so a resumed run draws the same permutations).

    `seed` fixes the shuffle permutations (drawn on rank 0 and broadcast). With bn "split" or
    "sync" the BatchNorm layers of `encoder_q` are replaced in place before the key encoder is
    copied from it.
    """

    step: torch.Tensor

    def __init__(self, encoder_q: nn.Module, cfg: MocoConfig, *, seed: int = 0) -> None:
        super().__init__()
        feature_dim = getattr(encoder_q, "feature_dim", None)
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError("MoCo: encoder_q must expose a positive int .feature_dim "
                             f"(got {feature_dim!r})")
        if not cfg.temperature > 0:
            raise ValueError(f"moco.temperature: {cfg.temperature} must be > 0")
        if not 0.0 <= cfg.momentum <= 1.0:
            raise ValueError(f"moco.momentum: {cfg.momentum} must be in [0, 1]")
        if cfg.bn not in ("shuffle", "split", "sync", "none"):
            raise ValueError(f"moco.bn: {cfg.bn!r} is not one of shuffle, split, sync, none")
        if cfg.bn == "split":
            encoder_q = convert_split_bn(encoder_q, cfg.bn_splits)
        elif cfg.bn == "sync":
            encoder_q = dist.convert_sync_batchnorm(encoder_q)
        self.encoder_q = encoder_q
        self.head_q = projection_head(feature_dim, cfg.dim, cfg.mlp)
        self.encoder_k = copy.deepcopy(self.encoder_q)  # starts equal to the query side
        self.head_k = copy.deepcopy(self.head_q)
        for p in list(self.encoder_k.parameters()) + list(self.head_k.parameters()):
            p.requires_grad_(False)
        self.queue = KeyQueue(cfg.dim, cfg.queue_size)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.momentum = float(cfg.momentum)
        self.temperature = float(cfg.temperature)
        self.symmetric = cfg.symmetric
        self.bn = cfg.bn
        self.seed = int(seed)

    @property
    def backbone(self) -> nn.Module:
        """The query encoder without head: the network to export and evaluate.

        Its state_dict keys are the plain encoder's (torchvision's for the ResNets), also in
        "split"/"sync" mode (SplitBatchNorm2d/SyncBatchNorm keep BatchNorm2d's keys and act as
        BatchNorm2d in eval mode).
        """
        return self.encoder_q

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head_q(self.encoder_q(x)), dim=1)  # (n, dim)

    @torch.no_grad()
    def _key(self, x: torch.Tensor, step: int, salt: int) -> torch.Tensor:
        """Keys (n, dim) for this rank's samples x (n, C, H, W), with shuffled BN."""
        if self.bn in ("shuffle", "split"):
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 2 + salt)
            x_shuf, idx_unshuffle = dist.shuffle_batch(x, gen)  # (n, C, H, W)
            k = F.normalize(self.head_k(self.encoder_k(x_shuf)), dim=1)  # (n, dim) shuffled
            return dist.unshuffle_batch(k, idx_unshuffle)  # (n, dim), row i <-> x[i]
        return F.normalize(self.head_k(self.encoder_k(x)), dim=1)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One MoCo step on this rank's views (n, C, H, W) each; returns (loss, stats).

        stats (detached tensors, this rank's batch): acc1 (top-1 of the positive among the
        K + 1 logits, in [0, 1]), pos_sim (mean q.k+), queue_fill (fraction of the queue that
        held real keys when it served as negatives in this step), momentum.
        With `symmetric`, loss = (L(q1, k2) + L(q2, k1)) / 2 and both key batches are
        enqueued once, after both losses used the same queue.
        """
        if view1.shape != view2.shape or view1.dim() != 4:
            raise ValueError(f"MoCo.forward: views must be (n, C, H, W) of equal shape; got "
                             f"{tuple(view1.shape)} and {tuple(view2.shape)}")
        # note: CPU-GPU sync point (one scalar), to seed this step's shuffle permutation.
        step = int(self.step.item())
        with torch.no_grad():
            momentum_update(self.encoder_q, self.encoder_k, self.momentum)
            momentum_update(self.head_q, self.head_k, self.momentum)
        queue_fill = self.queue.fill()
        # (dim, K) snapshot: the in-place enqueue below must not modify a tensor autograd saved.
        negatives = self.queue.queue.clone()
        q1 = self._query(view1)
        k2 = self._key(view2, step, salt=0)
        loss, acc1 = info_nce(q1, k2, negatives, self.temperature)
        pos_sim = (q1.detach() * k2).sum(dim=1).mean()
        new_keys = [dist.all_gather_nograd(k2)]  # (world * n, dim)
        if self.symmetric:
            q2 = self._query(view2)
            k1 = self._key(view1, step, salt=1)
            loss21, acc21 = info_nce(q2, k1, negatives, self.temperature)
            loss = 0.5 * (loss + loss21)
            acc1 = 0.5 * (acc1 + acc21)
            pos_sim = 0.5 * (pos_sim + (q2.detach() * k1).sum(dim=1).mean())
            new_keys.append(dist.all_gather_nograd(k1))
        self.queue.enqueue(torch.cat(new_keys, dim=0))
        self.step.add_(1)
        stats = {"acc1": acc1, "pos_sim": pos_sim, "queue_fill": queue_fill,
                 "momentum": torch.tensor(self.momentum)}
        return loss, stats
