"""THE kNN recipe: weighted kNN top-1 of frozen features, and a backbone scorer on eval shards.

The training loop's monitor, the nightly scorer and `mocopipe evaluate` all score with this:

    scorer = KnnScorer.from_sections(storage, cfg.data, cfg.eval, cfg.augment)   # loads once
    acc = scorer(backbone)                       # kNN top-1 (fraction) on data.eval_test
    acc = knn_top1(bank_feats, bank_labels, query_feats, query_labels, k=200, t=0.1)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import AugmentConfig, DataConfig, EvalConfig
from pipeline.eval.features import (
    ArrayLike,
    check_labelled,
    extract_features,
    load_labelled,
)
from pipeline.storage import Storage

# Cosine-similarity entries per kNN chunk (queries x bank): bounds memory to ~64 MB of float32.
KNN_CHUNK_ELEMENTS = 16 * 2**20


@torch.no_grad()
def knn_top1(bank_feats: ArrayLike, bank_labels: ArrayLike, query_feats: ArrayLike,
             query_labels: ArrayLike, *, k: int = 200, t: float = 0.1) -> float:
    """Weighted kNN top-1 accuracy (the InstDisc / MoCo monitor) with cosine similarity.

    Each query takes its `k` most similar bank samples; neighbour j votes for its label with
    weight exp(sim_j / t). Queries are processed in chunks so memory stays bounded.
    bank_feats (M, D), bank_labels (M,), query_feats (N, D), query_labels (N,).
    """
    if k < 1:
        raise ValueError(f"k: {k} must be >= 1")
    if not t > 0:
        raise ValueError(f"t: {t} must be > 0")
    bank = torch.as_tensor(bank_feats).float()
    bank_y = torch.as_tensor(bank_labels).long()
    query = torch.as_tensor(query_feats).float()
    query_y = torch.as_tensor(query_labels).long()
    check_labelled("bank", bank, bank_y)
    check_labelled("query", query, query_y)
    if bank.shape[1] != query.shape[1]:
        raise ValueError(f"query_feats: dimension {query.shape[1]} != bank dimension {bank.shape[1]}")
    bank = F.normalize(bank, dim=1)
    query = F.normalize(query, dim=1)
    k = min(k, bank.shape[0])
    classes = int(max(bank_y.max(), query_y.max())) + 1
    chunk = max(1, KNN_CHUNK_ELEMENTS // bank.shape[0])
    correct = 0
    for start in range(0, query.shape[0], chunk):
        q = query[start:start + chunk]
        sim = q @ bank.T                                  # (B, M) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)             # (B, k)
        weights = (top_sim / t).exp()                     # (B, k)
        votes = torch.zeros(q.shape[0], classes)
        votes.scatter_add_(1, bank_y[top_idx], weights)   # (B, classes)
        correct += int((votes.argmax(dim=1) == query_y[start:start + chunk]).sum())
    return correct / query.shape[0]


@dataclass
class KnnScorer:
    """kNN top-1 of any backbone on one labelled bank/query pair, images loaded once.

    bank_x / query_x: uint8 (M, C, H, W) / (N, C, H, W); bank_y / query_y: int64 (M,) / (N,).
    """

    bank_x: np.ndarray
    bank_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    augment: AugmentConfig
    k: int = 200
    t: float = 0.1
    device: str | torch.device = "cpu"
    last_query: tuple[torch.Tensor, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def from_sections(cls, storage: Storage, data: DataConfig, eval_cfg: EvalConfig,
                      augment: AugmentConfig, device: str | torch.device = "cpu") -> KnnScorer:
        """Load data.eval_train (bank, capped by eval.max_bank) and data.eval_test (queries,
        capped by eval.max_queries) at data.image_size with data.channels."""
        if not data.eval_train or not data.eval_test:
            raise ValueError("data.eval_train / data.eval_test: the kNN scorer needs both "
                             "labelled eval datasets")
        bank_x, bank_y = load_labelled(storage, data.eval_train, channels=data.channels,
                                       image_size=data.image_size, max_samples=eval_cfg.max_bank)
        query_x, query_y = load_labelled(storage, data.eval_test, channels=data.channels,
                                         image_size=data.image_size,
                                         max_samples=eval_cfg.max_queries)
        return cls(bank_x, bank_y, query_x, query_y, augment, k=eval_cfg.knn_k,
                   t=eval_cfg.knn_t, device=device)

    def __call__(self, backbone: nn.Module) -> float:
        """kNN top-1 of `backbone`; its query features (N, D) are kept in `last_query`."""
        bank = extract_features(backbone, self.bank_x, self.augment, device=self.device)
        query = extract_features(backbone, self.query_x, self.augment, device=self.device)
        self.last_query = (query, self.query_y)
        return knn_top1(bank, self.bank_y, query, self.query_y, k=self.k, t=self.t)
