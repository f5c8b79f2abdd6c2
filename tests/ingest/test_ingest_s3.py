"""Ingest against the real stack: SeaweedFS S3 and Ray reader actors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.loader import Loader, LoaderPlan
from pipeline.storage import Storage

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _loader(uri: str, shards: list[tuple[str, int]], *, use_ray: bool, rank: int = 0,
            world: int = 1, max_corrupt: float = 0.01) -> Loader:
    return Loader(DataConfig(image_size=16, train=uri),
                  IngestConfig(readers_per_worker=2, reader_num_cpus=0.25,
                               shuffle_window=32, batches_in_flight=3,
                               max_corrupt_fraction=max_corrupt),
                  AugmentConfig(), LoaderPlan(shards, rank, world, 8, seed=3),
                  storage=StorageConfig(), use_ray=use_ray)


def test_resume_on_ray_actors_equals_an_uninterrupted_run(s3_dataset: Any, stack: Any) -> None:
    uri, shards = s3_dataset([40, 23, 50, 31])
    # a fresh driver process connects to the stack's Ray head (see ray_resume_probe.py)
    arg = json.dumps({"uri": uri, "shards": shards, "stop": 7})
    res = subprocess.run([sys.executable, "-m", "tests.ingest.ray_resume_probe", arg], cwd=ROOT,
                         env={**os.environ, **stack.env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    reference, resumed = out["reference"], out["resumed"]
    assert len(reference["keys"]) == 144 // 8
    assert out["state"]["epoch"] == 1 and out["state"]["step"] == 7
    assert resumed["keys"] == reference["keys"]  # same samples, same order
    assert resumed["pixels"] == reference["pixels"]  # same augmentation randomness
    first, second = out["pids"]
    assert not set(first) & set(second) and out["pid"] not in first + second  # real actors
    assert out["metrics"]["bytes_read"] > 0 and out["metrics"]["corrupt"] == 0


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
