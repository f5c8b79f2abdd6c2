"""KnnMonitor against the tiny Fashion-MNIST shards on the session's SeaweedFS."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pipeline.config import load_config
from pipeline.eval.features import extract_features, load_labelled
from pipeline.eval.knn import knn_top1
from pipeline.model import small_cnn
from pipeline.storage import Storage
from pipeline.train.monitor import KnnMonitor
from tests.train.fixtures import TEST_SAMPLES, TINY

pytestmark = pytest.mark.integration


def test_knn_monitor_scores_and_keeps_the_query_features_of_its_last_call(
        stack: Any, fmnist_tiny: Any) -> None:
    cfg = load_config(TINY, [f'data.eval_train="{fmnist_tiny.train}"',
                             f'data.eval_test="{fmnist_tiny.test}"',
                             f'storage.endpoint_url="{stack.s3_endpoint}"'])
    monitor = KnnMonitor(cfg.eval, cfg.data, cfg.augment, torch.device("cpu"),
                         storage=cfg.storage)
    assert monitor.last_embeddings() is None  # nothing scored yet
    torch.manual_seed(0)
    first, second = small_cnn(width=4, pool_grid=2), small_cnn(width=4)
    acc = monitor(first)
    acc2 = monitor(second)
    feats, labels = monitor.last_embeddings()  # of `second`, the last backbone scored
    assert feats.shape == (TEST_SAMPLES, second.feature_dim) and labels.shape == (TEST_SAMPLES,)
    storage, d = Storage(cfg.storage), cfg.data
    bank_x, bank_y = load_labelled(storage, d.eval_train, channels=1, image_size=d.image_size,
                                   max_samples=cfg.eval.max_bank)
    query_x, query_y = load_labelled(storage, d.eval_test, channels=1, image_size=d.image_size,
                                     max_samples=cfg.eval.max_queries)
    assert torch.equal(feats, extract_features(second, query_x, cfg.augment))
    assert (labels == query_y).all()
    # the score is the kNN of exactly those features against the bank
    bank = extract_features(second, bank_x, cfg.augment)
    assert acc2 == knn_top1(bank, bank_y, feats, labels, k=cfg.eval.knn_k, t=cfg.eval.knn_t)
    assert 0.0 <= acc <= 1.0
