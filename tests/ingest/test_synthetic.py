"""`ingest.synthetic`: the Loader's bare-loop stand-in for `mocopipe bench pipeline` (no I/O)."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.loader import Loader, LoaderPlan

pytestmark = pytest.mark.unit


def _loader() -> Loader:
    return Loader(DataConfig(train="s3://nowhere/at-all", image_size=20, channels=1),
                  IngestConfig(readers_per_worker=2, synthetic=True), AugmentConfig(),
                  LoaderPlan([("shard-000000.tar", 50), ("shard-000001.tar", 30)], rank=1,
                             world_size=2, per_rank_batch=8, seed=0),
                  storage=StorageConfig(), use_ray=True)


def test_synthetic_batches_have_the_real_shapes_and_resume_like_real_ones() -> None:
    loader = _loader()  # use_ray=True, yet no Ray and no storage: nothing is read
    batches = list(loader.epoch(0))
    assert len(batches) == loader.steps_per_epoch == 80 // 16
    for i, b in enumerate(batches):
        assert b["view1"].shape == b["view2"].shape == (8, 1, 20, 20)
        assert b["view1"].dtype == b["view2"].dtype == torch.uint8
        assert b["step"] == i and b["bytes"] == 0 and b["corrupt"] == 0
    assert not batches[0]["view1"].equal(batches[0]["view2"])  # two different views
    state = loader.state_dict()
    assert state["step"] == 5 and state["cursors"] == [24, 16]
    head = _loader()
    it = head.epoch(0)
    next(it), next(it)
    again = _loader()
    again.load_state_dict(head.state_dict())
    assert [b["step"] for b in again.epoch(0)] == [2, 3, 4]
