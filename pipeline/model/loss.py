"""InfoNCE over one positive key and a queue of negatives (MoCo, eq. 1), as a pure function."""

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
