"""Faults on a private SeaweedFS: an S3 outage mid-stream, and memory vs corpus size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.loader import Loader, LoaderPlan
from pipeline.storage import Storage
from tests.ingest.shardkit import shard_bytes
from tests.ingest.weed import PrivateWeed

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateWeed]:
    server = PrivateWeed(tmp_path_factory.mktemp("weed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def weed_storage(weed: PrivateWeed, monkeypatch: pytest.MonkeyPatch) -> Storage:
    for key, value in weed.env.items():
        monkeypatch.setenv(key, value)
    return Storage(StorageConfig(endpoint_url=weed.endpoint))


def _upload(storage: Storage, uri: str, counts: list[int], pad: int) -> list[tuple[str, int]]:
    shards = []
    for s, n in enumerate(counts):
        storage.put_bytes(f"{uri}/shard-{s:06d}.tar", shard_bytes(s, n, side=16, pad_bytes=pad))
        shards.append((f"shard-{s:06d}.tar", n))
    return shards


def test_s3_outage_mid_stream_loses_and_duplicates_nothing(weed: PrivateWeed,
                                                           weed_storage: Storage) -> None:
    uri = "s3://corpus/outage"
    shards = _upload(weed_storage, uri, [30, 30, 30], pad=300_000)  # 9 MB shards

    def loader() -> Loader:
        return Loader(DataConfig(image_size=16, train=uri),
                      IngestConfig(readers_per_worker=1, shuffle_window=8, read_ahead_mb=1),
                      AugmentConfig(), LoaderPlan(shards, per_rank_batch=8, seed=5),
                      storage=StorageConfig(endpoint_url=weed.endpoint, max_retries=8,
                                            retry_backoff_s=0.2, connect_timeout_s=2,
                                            read_timeout_s=10), use_ray=False)

    reference = list(loader().epoch(0))
    faulty = loader()
    it = faulty.epoch(0)
    head = [next(it)]  # the first shard's stream is open; more shards are still to open
    assert faulty.reader_streams()[0], "expected an open shard stream"
    weed.kill()
    restart = threading.Thread(target=lambda: (time.sleep(3.0), weed.start()))
    restart.start()
    try:
        rest = list(it)
    finally:
        restart.join()
    got = head + rest
    assert [b["keys"] for b in got] == [b["keys"] for b in reference]
    for a, b in zip(got, reference):
        assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["view2"], b["view2"])
    m = faulty.metrics()
    # failed reads/opens were retried by the stream (resuming from the last byte received,
    # see test_tario_stream.py), and counted
    assert m["retries"] >= 1 and m["corrupt"] == 0 and m["repeats"] == 0


def test_peak_memory_does_not_grow_with_corpus_size(weed: PrivateWeed,
                                                    weed_storage: Storage) -> None:
    uri = "s3://corpus/memory"
    shards = _upload(weed_storage, uri, [20] * 16, pad=300_000)  # 16 x 6 MB

    def peak(n_shards: int) -> dict[str, int]:
        arg = json.dumps({"endpoint": weed.endpoint, "uri": uri, "shards": shards[:n_shards]})
        out = subprocess.run([sys.executable, "-m", "tests.ingest.rss_probe", arg], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                             text=True, timeout=300, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    small, large = peak(4), peak(16)
    assert (small["samples"], large["samples"]) == (80, 320)
    # a reader that kept what it streamed would hold ~70 MB more for the 4x corpus
    print("peak RSS 1x / 4x corpus:", small, large)
    assert large["peak_rss"] <= 1.10 * small["peak_rss"], (small, large)
    assert large["streaming_peak_rss"] <= 1.10 * small["streaming_peak_rss"], (small, large)
