"""Contrastive losses as pure functions (no collectives: callers pass gathered tensors).

info_nce      MoCo v2: one positive key, a queue of negatives.
nt_xent       SimCLR: two views, every other embedding of the global batch is a negative.
in_batch_ctr  MoCo v3: queries against the keys of the global batch, scaled by 2 * tau.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrastive loss of each query against its key (positive) and the queue (negatives).

    Args:
        q: (N, D) queries, L2-normalised.
        k: (N, D) keys, L2-normalised; k[i] is the positive of q[i]. Not detached here: the
            caller computes keys without gradient.
        queue: (D, K) negatives, L2-normalised columns.
        temperature: T > 0.
    Returns:
        loss: scalar, mean over the N queries of -log softmax(logits)[0], where
            logits = [q.k+, q.queue] / T, shape (N, 1 + K), label 0.
        acc1: scalar float tensor in [0, 1], the fraction of queries whose positive has the
            largest logit among the K + 1 (argmax takes the first maximum, so a tie with
            the positive counts as a hit).
    Computed in float32 with autocast disabled, whatever the input dtype.
    """
    if q.dim() != 2 or k.shape != q.shape:
        raise ValueError(f"info_nce: q and k must both be (N, D); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}")
    if queue.dim() != 2 or queue.shape[0] != q.shape[1]:
        raise ValueError(f"info_nce: queue must be (D, K) with D = {q.shape[1]}; "
                         f"got {tuple(queue.shape)}")
    if not temperature > 0:
        raise ValueError(f"info_nce: temperature {temperature} must be > 0")
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, queue = q.float(), k.float(), queue.float()
        l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
        l_neg = q @ queue  # (N, K)
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K)
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # positives at 0
        loss = F.cross_entropy(logits, labels)
        acc1 = (logits.detach().argmax(dim=1) == 0).float().mean()
    return loss, acc1


def _check_pair(name: str, a: torch.Tensor, b: torch.Tensor, temperature: float) -> None:
    if a.dim() != 2 or b.shape != a.shape:
        raise ValueError(f"{name}: both inputs must be (n, D); got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    if not temperature > 0:
        raise ValueError(f"{name}: temperature {temperature} must be > 0")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, *,
            all1: torch.Tensor | None = None, all2: torch.Tensor | None = None,
            offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent (SimCLR): each of the 2n local anchors against the 2N - 1 other embeddings.

    Args:
        z1, z2: (n, D) L2-normalised embeddings of the two views on this rank; z1[i] and
            z2[i] are positives of each other.
        temperature: T > 0.
        all1, all2: (N, D) the same embeddings from every rank (gathered with gradient),
            rows offset .. offset + n being z1 / z2 themselves. Default: z1, z2 (N = n).
        offset: index of this rank's first row in all1 / all2 (rank * n).
    Returns:
        loss: scalar, mean over the 2n anchors of -log softmax over the 2N - 1 candidates
            (its own row excluded): the positive plus 2N - 2 negatives. Equal embeddings give
            ln(2N - 1).
        acc1: fraction of anchors whose positive has the largest logit (ties count as hits).
    Computed in float32 with autocast disabled.
    """
    _check_pair("nt_xent", z1, z2, temperature)
    all1 = z1 if all1 is None else all1
    all2 = z2 if all2 is None else all2
    n, n_all = z1.shape[0], all1.shape[0]
    if all2.shape != all1.shape or all1.shape[1] != z1.shape[1] or not 0 <= offset <= n_all - n:
        raise ValueError(f"nt_xent: all1/all2 must be (N, {z1.shape[1]}) with offset {offset} + "
                         f"n {n} <= N; got {tuple(all1.shape)}, {tuple(all2.shape)}")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        anchors = torch.cat([z1, z2]).float()  # (2n, D)
        cands = torch.cat([all1, all2]).float()  # (2N, D)
        logits = anchors @ cands.T / temperature  # (2n, 2N)
        local = torch.arange(n, device=z1.device) + offset  # (n,) rows of this rank in all1
        self_idx = torch.cat([local, local + n_all])  # (2n,) each anchor's own column
        pos_idx = torch.cat([local + n_all, local])  # (2n,) its other view's column
        rows = torch.arange(2 * n, device=z1.device)
        logits = logits.index_put((rows, self_idx), torch.tensor(float("-inf"),
                                                                 device=z1.device))
        loss = F.cross_entropy(logits, pos_idx)
        det = logits.detach()
        acc1 = (det[rows, pos_idx] >= det.max(dim=1).values).float().mean()
    return loss, acc1


def in_batch_ctr(q: torch.Tensor, k_all: torch.Tensor, temperature: float, *, offset: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo v3's contrastive loss: queries against the in-batch keys of all ranks, x 2 tau.

    Args:
        q: (n, D) L2-normalised queries of this rank (with gradient).
        k_all: (N, D) L2-normalised keys of every rank (no gradient); k_all[offset + i] is the
            positive of q[i], the other N - 1 keys are its negatives.
        temperature: tau > 0.
        offset: index of this rank's first key in k_all (rank * n).
    Returns:
        loss: scalar, 2 * tau * mean_i -log softmax(q_i . k_all / tau)[offset + i] (the paper's
            scaling, which makes the gradient scale independent of tau); chance level at equal
            logits is 2 * tau * ln(N).
        acc1: fraction of queries whose positive has the largest logit (ties count as hits).
    """
    if q.dim() != 2 or k_all.dim() != 2 or k_all.shape[1] != q.shape[1]:
        raise ValueError(f"in_batch_ctr: q (n, D) and k_all (N, D) needed; got "
                         f"{tuple(q.shape)}, {tuple(k_all.shape)}")
    if not 0 <= offset <= k_all.shape[0] - q.shape[0]:
        raise ValueError(f"in_batch_ctr: offset {offset} + n {q.shape[0]} exceeds N "
                         f"{k_all.shape[0]}")
    if not temperature > 0:
        raise ValueError(f"in_batch_ctr: temperature {temperature} must be > 0")
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = q.float() @ k_all.float().T / temperature  # (n, N)
        labels = torch.arange(q.shape[0], device=q.device) + offset  # (n,)
        loss = F.cross_entropy(logits, labels) * (2.0 * temperature)
        det = logits.detach()
        rows = torch.arange(q.shape[0], device=q.device)
        acc1 = (det[rows, labels] >= det.max(dim=1).values).float().mean()
    return loss, acc1
