"""The kNN monitor: the `Evaluator` the training loop calls on rank 0.

`KnnMonitor` scores a backbone with THE kNN recipe (`pipeline.eval.knn.KnnScorer`: weighted
kNN, k and tau from `[eval]`), the labelled bank/query images loaded once. It takes only its own sections: `eval`, `data` (eval URIs, image size, channels),
`augment` (normalisation) and the storage client settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.config import AugmentConfig, DataConfig, EvalConfig, StorageConfig

if TYPE_CHECKING:
    from pipeline.eval.knn import KnnScorer


class KnnMonitor:
    """The training loop's `Evaluator`: THE kNN recipe (`pipeline.eval.knn.KnnScorer`) on the
    labelled eval shards, loaded lazily at the first evaluation (so an unreachable eval set
    never delays the first step) and cached for the rest of the run."""

    def __init__(self, eval_cfg: EvalConfig, data: DataConfig, augment: AugmentConfig,
                 device: torch.device, *, storage: StorageConfig | None = None) -> None:
        if not data.eval_train or not data.eval_test:
            raise ValueError("data.eval_train / data.eval_test: both are needed for the kNN "
                             "monitor")
        self.eval, self.data, self.augment, self.device = eval_cfg, data, augment, device
        self.storage = storage or StorageConfig()
        self._scorer: KnnScorer | None = None

    def __call__(self, backbone: nn.Module) -> float:
        """kNN top-1 of `backbone`; its query features are kept for `last_embeddings`."""
        from pipeline.eval.knn import KnnScorer
        from pipeline.storage import Storage

        if self._scorer is None:
            self._scorer = KnnScorer.from_sections(Storage(self.storage), self.data, self.eval,
                                                   self.augment, self.device)
        return self._scorer(backbone)

    def last_embeddings(self) -> tuple[torch.Tensor, Any] | None:
        """Backbone features (N, D) of the query (eval_test) images and their labels (N,) from
        the last scoring (None before the first): the end-of-run embedding plot reuses the
        final evaluation's features instead of extracting them again."""
        return None if self._scorer is None else self._scorer.last_query
