"""Concurrent and interrupted shard writes lose nothing (real SeaweedFS, conditional PUTs)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

import pipeline.shards.writer as writer_mod
from pipeline.shards.check import check_dataset
from pipeline.shards.manifest import read_manifest
from pipeline.shards.synthetic import write_jpeg_folder
from pipeline.shards.writer import write_shards
from pipeline.storage import Storage

pytestmark = pytest.mark.integration


def test_two_concurrent_appends_keep_every_shard(storage: Storage, tmp_path: Path) -> None:
    dest = f"s3://corpus/appends-{uuid.uuid4().hex[:8]}"
    for name, seed in (("base", 1), ("a", 2), ("b", 3)):
        write_jpeg_folder(str(tmp_path / name), 12, width=32, height=32, classes=1, seed=seed)
    write_shards(str(tmp_path / "base"), dest, storage=storage, samples_per_shard=5,
                 labels="none", progress=False)
    barrier = threading.Barrier(2)

    class Racing(Storage):
        """Both writers have read the manifest (and named their shards) before any upload."""

        def put_file(self, uri: str, path: str, metadata: dict[str, str] | None = None) -> None:
            if not getattr(threading.current_thread(), "passed", False):
                barrier.wait(timeout=120)
                threading.current_thread().passed = True  # type: ignore[attr-defined]
            super().put_file(uri, path, metadata)

    errors: list[BaseException] = []

    def append(name: str) -> None:
        try:
            write_shards(str(tmp_path / name), dest, storage=Racing(), samples_per_shard=5,
                         labels="none", append=True, workers=1, progress=False)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert errors == []  # the loser of the manifest swap re-read it and merged its shards
    m = read_manifest(storage, dest)
    assert m.total_samples == 36 and len(m.shards) == 9
    assert len({s.key for s in m.shards}) == 9  # both writers numbered from 3, no clobbering
    report = check_dataset(storage, dest)
    assert report.ok and report.samples_seen == 36


def test_a_rewrite_leaves_live_shards_untouched_until_its_manifest_lands(
        storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = f"s3://corpus/rewrite-{uuid.uuid4().hex[:8]}"
    write_jpeg_folder(str(tmp_path / "v1"), 10, width=32, height=32, classes=1, seed=1)
    write_jpeg_folder(str(tmp_path / "v2"), 10, width=32, height=32, classes=1, seed=2)
    old = write_shards(str(tmp_path / "v1"), dest, storage=storage, samples_per_shard=5,
                       labels="none", progress=False)
    live = {s.key: storage.get_bytes(f"{dest}/{s.key}") for s in old.shards}

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("crash before the manifest")

    with monkeypatch.context() as patch:
        patch.setattr(writer_mod, "swap_manifest", crash)
        with pytest.raises(RuntimeError, match="crash before the manifest"):
            write_shards(str(tmp_path / "v2"), dest, storage=storage, samples_per_shard=5,
                         labels="none", progress=False)
    assert read_manifest(storage, dest) == old
    assert {k: storage.get_bytes(f"{dest}/{k}") for k in live} == live  # not overwritten
    assert check_dataset(storage, dest).ok
    new = write_shards(str(tmp_path / "v2"), dest, storage=storage, samples_per_shard=5,
                       labels="none", progress=False)
    assert not {s.key for s in new.shards} & set(live)  # content-named, old ones untouched
    assert check_dataset(storage, dest).ok
