"""The kNN monitor: the `Evaluator` the training loop calls on rank 0.

`KnnMonitor` caches the labelled bank/query images once and scores a backbone with the
weighted kNN (k, tau from `[eval]`) on backbone features (`pipeline.eval.features`, THE kNN
recipe). It takes only its own sections: `eval`, `data` (eval URIs, image size, channels),
`augment` (normalisation) and the storage client settings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.config import AugmentConfig, DataConfig, EvalConfig, StorageConfig


class KnnMonitor:
    """Weighted kNN top-1 of a backbone on the labelled eval shards (images cached once)."""

    def __init__(self, eval_cfg: EvalConfig, data: DataConfig, augment: AugmentConfig,
                 device: torch.device, *, storage: StorageConfig | None = None) -> None:
        if not data.eval_train or not data.eval_test:
            raise ValueError("data.eval_train / data.eval_test: both are needed for the kNN "
                             "monitor")
        self.eval, self.data, self.augment, self.device = eval_cfg, data, augment, device
        self.storage = storage or StorageConfig()
        self._data: tuple[Any, Any, Any, Any] | None = None
        self._last_query: tuple[torch.Tensor, Any] | None = None

    def _load(self) -> tuple[Any, Any, Any, Any]:
        from pipeline.eval.features import load_labelled
        from pipeline.storage import Storage

        if self._data is None:
            d, e = self.data, self.eval
            storage = Storage(self.storage)
            bank_x, bank_y = load_labelled(storage, d.eval_train, channels=d.channels,
                                           image_size=d.image_size, max_samples=e.max_bank)
            query_x, query_y = load_labelled(storage, d.eval_test, channels=d.channels,
                                             image_size=d.image_size, max_samples=e.max_queries)
            self._data = (bank_x, bank_y, query_x, query_y)
        return self._data

    def __call__(self, backbone: nn.Module) -> float:
        """kNN top-1 of `backbone`; its query features are kept for `last_embeddings`."""
        from pipeline.eval.features import extract_features
        from pipeline.eval.knn import knn_top1

        bank_x, bank_y, query_x, query_y = self._load()
        bank = extract_features(backbone, bank_x, self.augment, device=self.device)
        query = extract_features(backbone, query_x, self.augment, device=self.device)
        self._last_query = (query, query_y)
        return knn_top1(bank, bank_y, query, query_y, k=self.eval.knn_k, t=self.eval.knn_t)

    def last_embeddings(self) -> tuple[torch.Tensor, Any] | None:
        """Backbone features (N, D) of the query (eval_test) images and their labels (N,) from
        the last scoring (None before the first): the end-of-run embedding plot reuses the
        final evaluation's features instead of extracting them again."""
        return self._last_query
