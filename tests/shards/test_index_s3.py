"""`shards index` against the real SeaweedFS of the session stack: an img2dataset-style corpus
under a prefix the test never writes to after the upload, indexed elsewhere."""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import AugmentConfig, DataConfig, IngestConfig, StorageConfig
from pipeline.ingest.loader import Loader, LoaderPlan
from pipeline.shards.index import index_shards
from pipeline.shards.indexio import object_etag
from pipeline.shards.manifest import ManifestConflict, read_manifest, swap_manifest
from pipeline.storage import Storage
from tests.shards.corpuskit import write_corpus

pytestmark = pytest.mark.integration


def _listing(storage: Storage, prefix: str) -> dict[str, str]:
    return {uri: object_etag(storage, uri) or "" for uri in storage.list(prefix)}


def _content(manifest) -> list[tuple]:
    return [(os.path.basename(s.key), s.samples, s.bytes, s.formats, s.no_image)
            for s in manifest.shards]


def test_prefix_brace_and_folder_index_to_the_same_manifest(storage: Storage,
                                                            tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "laion", shards=3, per_shard=10)
    root = f"s3://corpus/index-{uuid.uuid4().hex[:8]}"
    src = f"{root}/laion"
    for path in sorted(corpus.folder.iterdir()):
        storage.put_file(f"{src}/{path.name}", str(path))
    before = _listing(storage, src)
    assert len(before) == 4  # 3 tars + the parquet side file
    a, b = f"{root}/idx/prefix.json", f"{root}/idx/brace.json"
    c = str(tmp_path / "idx" / "folder.json")
    assert main(["shards", "index", src, "--manifest", a, "--quiet", "--workers", "2"]) == 0
    assert main(["shards", "index", src + "/{00000..00002}.tar", "--manifest", b,
                 "--quiet"]) == 0
    assert main(["shards", "index", str(corpus.folder), "--manifest", c, "--quiet"]) == 0
    assert _listing(storage, src) == before  # nothing written into the source prefix
    ma, mb, mc = (read_manifest(storage, u) for u in (a, b, c))
    assert [s.key for s in ma.shards] == [f"{src}/{n:05d}.tar" for n in range(3)]
    strip = [dataclasses.replace(s, added_at="") for s in ma.shards]
    assert strip == [dataclasses.replace(s, added_at="") for s in mb.shards]
    assert _content(ma) == _content(mb) == _content(mc)
    assert [s.samples for s in ma.shards] == [corpus.images[f"{n:05d}.tar"] for n in range(3)]
    assert ma.total_samples == 26 and sum(s.no_image for s in ma.shards) == 4
    assert all(s.etag == before[f"{src}/{os.path.basename(s.key)}"] for s in ma.shards)
    # the manifest file URI is a dataset name everywhere: check, ls, the loader
    assert main(["shards", "check", a]) == 0
    assert main(["shards", "ls", "--json", a]) == 0
    loader = Loader(DataConfig(train=a, image_size=16),
                    IngestConfig(readers_per_worker=2, shuffle_window=8, batches_in_flight=2,
                                 read_ahead_mb=1, max_corrupt_fraction=0.0),
                    AugmentConfig(),
                    LoaderPlan(ma.shard_counts(), rank=0, world_size=1, per_rank_batch=4, seed=1),
                    storage=StorageConfig(), use_ray=False)
    keys = [k for batch in loader.epoch(0) for k in batch["keys"]]
    assert len(set(keys)) == len(keys) == 24
    # a shard rewritten after indexing is reported by `shards check`
    storage.put_file(f"{src}/00001.tar", str(corpus.tars[2]))
    assert main(["shards", "check", a]) == 1


def test_seaweedfs_honours_conditional_manifest_writes(storage: Storage,
                                                       tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "src", shards=1)
    dest = f"s3://corpus/cas-{uuid.uuid4().hex[:8]}/manifest.json"
    m = index_shards(str(corpus.folder), storage=storage, dest=dest, progress=False).manifest
    with pytest.raises(ManifestConflict, match="run the same command again"):
        swap_manifest(storage, dest, m, expect_etag=None)  # If-None-Match: * on an existing key
    etag = object_etag(storage, dest)
    with pytest.raises(ManifestConflict):
        swap_manifest(storage, dest, m, expect_etag='"0123456789abcdef0123456789abcdef"')
    swap_manifest(storage, dest, dataclasses.replace(m, dataset="renamed"), expect_etag=etag)
    assert read_manifest(storage, dest).dataset == "renamed"


def test_two_concurrent_appends_lose_nothing(storage: Storage, tmp_path: Path) -> None:
    """Two `index --append` of different new shards into one manifest at the same moment: one
    wins the swap, the other gets ManifestConflict and, run again, merges; no shard lost."""
    root = f"s3://corpus/race-{uuid.uuid4().hex[:8]}"
    corpus = write_corpus(tmp_path / "c", shards=3)
    for path in corpus.tars:
        storage.put_file(f"{root}/data/{path.name}", str(path))
    dest = f"{root}/idx.json"
    index_shards(f"{root}/data/{{00000..00000}}.tar", storage=storage, dest=dest,
                 progress=False)
    barrier = threading.Barrier(2)

    class RacingStorage(Storage):
        def get_stream(self, uri: str, start: int = 0):
            barrier.wait(timeout=60)  # both have read the old manifest's ETag by now
            return super().get_stream(uri, start)

    results: dict[str, BaseException | None] = {}

    def run(name: str) -> None:
        try:
            index_shards(f"{root}/data/{name}", storage=RacingStorage(), dest=dest,
                         append=True, progress=False)
            results[name] = None
        except BaseException as exc:  # noqa: BLE001 - inspected below
            results[name] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in ("{00001..00001}.tar",
                                                                 "{00002..00002}.tar")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    outcomes = sorted(type(e).__name__ for e in results.values() if e is not None)
    assert outcomes == ["ManifestConflict"] and len(results) == 2
    loser = next(n for n, e in results.items() if e is not None)
    index_shards(f"{root}/data/{loser}", storage=storage, dest=dest, append=True,
                 progress=False)
    keys = sorted(s.key for s in read_manifest(storage, dest).shards)
    assert keys == ["data/00000.tar", "data/00001.tar", "data/00002.tar"]  # under idx's folder


def test_ray_tasks_index_to_the_same_manifest_as_threads(storage: Storage,
                                                         tmp_path: Path) -> None:
    """`shards index --ray` (a child process, as a user runs it: this one imported Ray
    before the stack's token existed) reads the tars as Ray tasks on the stack's cluster,
    which take their S3 keys from the nodes' environment; the manifest equals the thread
    index's, and a tar that is not a tar is left out, named, on both paths."""
    import subprocess
    import sys

    corpus = write_corpus(tmp_path / "laion", shards=3, per_shard=10)
    src = f"s3://corpus/rayindex-{uuid.uuid4().hex[:8]}/laion"
    for path in sorted(corpus.folder.iterdir()):
        storage.put_file(f"{src}/{path.name}", str(path))
    storage.put_bytes(f"{src}/00003.tar", b"not a tar at all " * 64)
    threads, on_ray = f"{src}-idx/threads.json", f"{src}-idx/ray.json"
    assert main(["shards", "index", src, "--manifest", threads, "--quiet"]) == 0
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "shards", "index", src,
                           "--manifest", on_ray, "--quiet", "--ray", "--workers", "2",
                           "--ray-cpus", "0.25"], cwd=repo, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Ray worker process(es)" in proc.stdout, proc.stdout
    assert "1 unreadable tar(s) left out, e.g. " + f"{src}/00003.tar" in proc.stdout
    mt, mr = read_manifest(storage, threads), read_manifest(storage, on_ray)
    strip = [dataclasses.replace(s, added_at="") for s in mt.shards]
    assert strip == [dataclasses.replace(s, added_at="") for s in mr.shards]
    assert [os.path.basename(s.key) for s in mr.shards] == [f"{n:05d}.tar" for n in range(3)]
    assert mr.total_samples == 26
