"""Ingest against the real stack: SeaweedFS S3 and Ray reader actors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.loader import Loader
from pipeline.storage import Storage

pytestmark = pytest.mark.integration


def _loader(uri: str, shards: list[tuple[str, int]], *, use_ray: bool, rank: int = 0,
            world: int = 1, max_corrupt: float = 0.01) -> Loader:
    return Loader(storage=StorageConfig(), data=DataConfig(image_size=16),
                  augment=AugmentConfig(), dataset_uri=uri, shards=shards, rank=rank,
                  ingest=IngestConfig(readers_per_worker=2, reader_num_cpus=0.25,
                                      shuffle_window=32, batches_in_flight=3,
                                      max_corrupt_fraction=max_corrupt),
                  world_size=world, per_rank_batch=8, seed=3, use_ray=use_ray)


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [x["keys"] for x in a] == [y["keys"] for y in b]
    for x, y in zip(a, b):
        assert torch.equal(x["view1"], y["view1"]) and torch.equal(x["view2"], y["view2"])


def test_resume_on_ray_actors_equals_an_uninterrupted_run(s3_dataset: Any,
                                                          ray_session: Any) -> None:
    uri, shards = s3_dataset([40, 23, 50, 31])
    reference = list(_loader(uri, shards, use_ray=False).epoch(1))  # in-process readers
    assert len(reference) == 144 // 8

    first = _loader(uri, shards, use_ray=True)
    pids = first.reader_pids()
    it = first.epoch(1)
    head = [next(it) for _ in range(7)]
    state = first.state_dict()
    first.close()  # kills the reader actors
    assert state["epoch"] == 1 and state["step"] == 7

    resumed = _loader(uri, shards, use_ray=True)
    assert set(resumed.reader_pids()).isdisjoint(pids)  # fresh actor processes
    resumed.load_state_dict(state)
    rest = list(resumed.epoch(1))
    m = resumed.metrics()
    resumed.close()
    _same(head + rest, reference)
    assert m["bytes_read"] > 0 and m["corrupt"] == 0 and m["repeats"] == 0


def test_two_ranks_with_very_uneven_shards_get_equal_batches(s3_dataset: Any) -> None:
    uri, shards = s3_dataset([2, 90, 1, 7, 33])
    counts, keys = [], []
    for rank in range(2):
        batches = list(_loader(uri, shards, use_ray=False, rank=rank, world=2).epoch(0))
        counts.append(len(batches))
        assert all(b["view1"].shape == (8, 3, 16, 16) for b in batches)
        keys += [k for b in batches for k in b["keys"]]
    assert counts == [133 // 16, 133 // 16]
    assert len(keys) == len(set(keys)) == counts[0] * 16


def test_a_corrupted_shard_on_s3_is_skipped_and_counted(s3_dataset: Any,
                                                        storage: Storage) -> None:
    uri, shards = s3_dataset([30, 30, 30])
    key = f"{uri}/shard-000001.tar"
    data = bytearray(storage.get_bytes(key))
    data[len(data) // 3:len(data) // 3 + 4096] = b"\xee" * 4096  # garble headers and data
    storage.put_bytes(key, bytes(data))
    loader = _loader(uri, shards, use_ray=False, max_corrupt=0.9)
    batches = list(loader.epoch(0))
    assert len(batches) == loader.steps_per_epoch == 11
    m = loader.metrics()
    unique = {k for b in batches for k in b["keys"]}
    lost = 30 - sum(1 for k in unique if k.startswith("s001"))
    # (2 of the 90 samples are not planned this epoch: they may be among the "lost" ones)
    assert lost >= 10 and m["corrupt"] >= lost - 2 and m["repeats"] >= lost - 2
