"""Concurrent and interrupted shard writes lose nothing (real SeaweedFS, conditional PUTs)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

import pipeline.shards.writer as writer_mod
from pipeline.shards.check import check_dataset
from pipeline.shards.manifest import ManifestConflict, read_manifest
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

        def put_file(self, uri: str, path: str, metadata: dict[str, str] | None = None,
                     **kwargs: bool) -> None:
            if not getattr(threading.current_thread(), "passed", False):
                barrier.wait(timeout=120)
                threading.current_thread().passed = True  # type: ignore[attr-defined]
            super().put_file(uri, path, metadata, **kwargs)

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


def test_two_fresh_writes_into_a_new_dataset_overwrite_nothing(storage: Storage,
                                                              tmp_path: Path) -> None:
    """Two `shards write` into a dataset with no manifest yet, interleaved at the worst
    moments: B uploads its shard-000000.tar ... after A stored its own under the same names,
    then A creates the manifest. A's listed shards keep A's bytes; B loses the create with a
    one-line ManifestConflict naming --append, and run again with it, adds its shards."""
    dest = f"s3://corpus/fresh-race-{uuid.uuid4().hex[:8]}"
    for name, seed in (("a", 2), ("b", 3)):
        write_jpeg_folder(str(tmp_path / name), 12, width=32, height=32, classes=1, seed=seed)
    a_uploaded, b_uploaded, a_created = (threading.Event() for _ in range(3))

    class A(Storage):
        def put_bytes(self, uri: str, data: bytes, **kwargs: object) -> str:
            if uri.endswith("/manifest.json"):  # every shard of A is stored by now
                a_uploaded.set()
                assert b_uploaded.wait(120)
                try:
                    return super().put_bytes(uri, data, **kwargs)  # type: ignore[arg-type]
                finally:
                    a_created.set()
            return super().put_bytes(uri, data, **kwargs)  # type: ignore[arg-type]

    class B(Storage):
        def put_file(self, uri: str, path: str, metadata: dict[str, str] | None = None,
                     **kwargs: bool) -> None:
            assert a_uploaded.wait(120)  # A's shards hold the plain names
            super().put_file(uri, path, metadata, **kwargs)

        def put_bytes(self, uri: str, data: bytes, **kwargs: object) -> str:
            if uri.endswith("/manifest.json"):
                b_uploaded.set()
                assert a_created.wait(120)
            return super().put_bytes(uri, data, **kwargs)  # type: ignore[arg-type]

    results: dict[str, object] = {}

    def write(name: str, store: Storage) -> None:
        try:
            results[name] = write_shards(str(tmp_path / name), dest, storage=store,
                                         samples_per_shard=5, labels="none", workers=1,
                                         progress=False)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            results[name] = exc
            b_uploaded.set()  # never leave the other writer waiting
            a_uploaded.set()

    threads = [threading.Thread(target=write, args=("a", A())),
               threading.Thread(target=write, args=("b", B()))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    won = read_manifest(storage, dest)
    assert won == results["a"] and won.total_samples == 12
    report = check_dataset(storage, dest)
    assert report.ok and report.samples_seen == 12  # A's listed shards hold A's bytes
    assert isinstance(results["b"], ManifestConflict), results
    assert "\n" not in str(results["b"]) and "--append" in str(results["b"])
    merged = write_shards(str(tmp_path / "b"), dest, storage=storage, samples_per_shard=5,
                          labels="none", append=True, progress=False)
    assert merged.shards[:3] == won.shards and merged.total_samples == 24
    report = check_dataset(storage, dest)
    assert report.ok and report.samples_seen == 24


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
