"""`shards index` on an img2dataset-style corpus in a local folder (no servers)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.loader import Loader, LoaderPlan
from pipeline.shards.check import check_dataset
from pipeline.shards.index import index_shards
from pipeline.shards.indexio import object_etag
from pipeline.shards.manifest import ManifestConflict, read_manifest, swap_manifest
from pipeline.storage import Storage
from tests.shards.corpuskit import write_corpus

pytestmark = pytest.mark.unit


class FailingStorage(Storage):
    """Counts streams opened; the `fail_at`-th one (1-based) raises KeyboardInterrupt."""

    def __init__(self, fail_at: int = 0) -> None:
        super().__init__()
        self.fail_at, self.opened = fail_at, []

    def get_stream(self, uri: str, start: int = 0) -> tuple[Any, int]:
        self.opened.append(uri)
        if len(self.opened) == self.fail_at:
            raise KeyboardInterrupt("injected interruption")
        return super().get_stream(uri, start)


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_index_counts_image_samples_and_writes_only_the_destination(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "src")
    before = _listing(corpus.folder)
    report = index_shards(str(corpus.folder), storage=Storage(), workers=2, progress=False,
                          dest=str(tmp_path / "idx" / "laion.json"))
    assert _listing(corpus.folder) == before  # the source folder is never written
    m = read_manifest(Storage(), str(tmp_path / "idx" / "laion.json"))
    assert m == report.manifest and m.dataset == "src"
    assert [os.path.basename(s.key) for s in m.shards] == ["00000.tar", "00001.tar", "00002.tar"]
    assert all(s.key.startswith(str(corpus.folder)) for s in m.shards)  # full locations
    assert {os.path.basename(s.key): s.samples for s in m.shards} == corpus.images
    assert {os.path.basename(s.key): s.no_image for s in m.shards} == corpus.no_image
    assert report.no_image == sum(corpus.no_image.values()) == 4
    assert all(s.formats == ["jpg", "png", "webp"] and s.sha256 == "" for s in m.shards)
    assert [s.bytes for s in m.shards] == [p.stat().st_size for p in corpus.tars]


def test_sha256_is_recorded_only_when_asked(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "src", shards=2)
    m = index_shards(str(corpus.folder), storage=Storage(), sha256=True, progress=False,
                     dest=str(tmp_path / "i.json")).manifest
    assert [s.sha256 for s in m.shards] == [hashlib.sha256(p.read_bytes()).hexdigest()
                                            for p in corpus.tars]


def test_interrupted_index_resumes_without_rereading(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "src", shards=4, per_shard=6)
    dest = str(tmp_path / "i.json")
    crashing = FailingStorage(fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        index_shards(str(corpus.folder), storage=crashing, dest=dest, workers=1, progress=False)
    assert not os.path.exists(dest) and os.path.exists(dest + ".partial")
    again = FailingStorage()
    report = index_shards(str(corpus.folder), storage=again, dest=dest, workers=1,
                          progress=False)
    assert again.opened == [str(corpus.tars[2]), str(corpus.tars[3])]  # not 0 and 1 again
    assert (report.indexed, report.reused) == (2, 2)
    assert not os.path.exists(dest + ".partial")
    fresh = index_shards(str(corpus.folder), storage=Storage(), progress=False,
                         dest=str(tmp_path / "fresh.json")).manifest
    assert [(os.path.basename(s.key), s.samples, s.etag) for s in report.manifest.shards] == \
        [(os.path.basename(s.key), s.samples, s.etag) for s in fresh.shards]


def test_append_reads_only_new_shards_and_refuses_to_clobber(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "src", shards=2)
    dest = str(tmp_path / "i.json")
    index_shards(str(corpus.folder), storage=Storage(), dest=dest, progress=False)
    more = write_corpus(tmp_path / "more", shards=3)
    os.replace(more.tars[2], corpus.folder / "00002.tar")
    with pytest.raises(ValueError, match="already exists; use --append"):
        index_shards(str(corpus.folder), storage=Storage(), dest=dest, progress=False)
    counting = FailingStorage()
    report = index_shards(str(corpus.folder), storage=counting, dest=dest, append=True,
                          progress=False)
    assert counting.opened == [str(corpus.folder / "00002.tar")]
    assert len(report.manifest.shards) == 3 and report.reused == 2


def test_check_accepts_an_index_and_reports_changed_etags(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "src", shards=2)
    dest = str(tmp_path / "i.json")
    index_shards(str(corpus.folder), storage=Storage(), dest=dest, progress=False)
    assert check_dataset(Storage(), dest).ok
    data = corpus.tars[1].read_bytes()
    corpus.tars[1].write_bytes(data)  # same bytes, rewritten: a new ETag (mtime)
    os.utime(corpus.tars[1], ns=(1, 1))
    problems = check_dataset(Storage(), dest).problems
    assert [(os.path.basename(p.shard), p.kind) for p in problems] == [("00001.tar", "etag")]


def test_manifest_swap_is_compare_and_swap(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "src", shards=1)
    dest = str(tmp_path / "i.json")
    m = index_shards(str(corpus.folder), storage=Storage(), dest=dest, progress=False).manifest
    with pytest.raises(ManifestConflict, match="run the same command again"):
        swap_manifest(Storage(), dest, m, expect_etag=None)  # it exists now
    etag = object_etag(Storage(), dest)
    swap_manifest(Storage(), dest, m, expect_etag=etag)
    with pytest.raises(ManifestConflict):
        swap_manifest(Storage(), dest, m, expect_etag=etag)  # replaced since


def test_loader_reads_batches_from_an_indexed_external_corpus(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "src", shards=3, per_shard=10)
    dest = str(tmp_path / "elsewhere" / "laion.json")
    m = index_shards(str(corpus.folder), storage=Storage(), dest=dest, progress=False).manifest
    loader = Loader(DataConfig(train=dest, image_size=16),
                    IngestConfig(readers_per_worker=2, shuffle_window=8, batches_in_flight=2,
                                 read_ahead_mb=1, max_corrupt_fraction=0.0),
                    AugmentConfig(),
                    LoaderPlan(m.shard_counts(), rank=0, world_size=1, per_rank_batch=4, seed=3),
                    storage=StorageConfig(), use_ray=False)
    batches = list(loader.epoch(0))
    assert len(batches) == loader.steps_per_epoch == 26 // 4
    keys = [k for b in batches for k in b["keys"]]
    assert len(set(keys)) == len(keys) == 24 and sum(b["corrupt"] for b in batches) == 0
    failed = {f"{i:09d}" for i in range(30) if i % 7 == 3}
    assert not failed & {k.rsplit("/", 1)[-1] for k in keys}
    assert batches[0]["view1"].shape == (4, 3, 16, 16)


def test_side_members_ride_along_and_imageless_samples_are_not_members(tmp_path: Path) -> None:
    from pipeline.ingest.source import StreamOptions, StreamStats, read_slices
    from pipeline.shards.plan import ShardSlice

    corpus = write_corpus(tmp_path / "src", shards=2, per_shard=10)
    key = str(corpus.tars[1])  # keys 10..19; 10 and 17 have no image; .npy members too
    raw = list(read_slices(Storage(), str(tmp_path / "i.json"), [ShardSlice(key, 0, 8)],
                           {(key, m) for m in range(1, 8)}, StreamStats(),
                           StreamOptions(read_ahead_bytes=2**20, max_retries=1, backoff_s=0.01)))
    assert [r.member for r in raw] == list(range(1, 8))
    assert [r.key for r in raw] == [f"{i:09d}" for i in (12, 13, 14, 15, 16, 18, 19)]
    for r in raw:
        assert r.files is not None and {"json", "txt", "npy"} <= set(r.files)
        assert sum(e in r.files for e in ("jpg", "png", "webp")) == 1
        assert r.files["txt"] == f"caption {int(r.key)}".encode()
