"""Storage and shards against the real SeaweedFS S3 of the session stack."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.config import StorageConfig
from pipeline.shards.check import check_dataset
from pipeline.shards.manifest import read_manifest
from pipeline.shards.writer import write_shards
from pipeline.storage import ObjectNotFound, PreconditionFailed, Storage, StorageError
from tests.shards.conftest import CountingStorage, read_folder

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"s3://corpus/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


def read_back(storage: Storage, dest: str) -> list[dict[str, Any]]:
    """All samples via webdataset's tar iteration over bytes fetched with Storage."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    out = []
    for shard in read_manifest(storage, dest).shards:
        body, _ = storage.get_stream(f"{dest}/{shard.key}")
        try:
            out += list(group_by_keys(tar_file_expander([{"stream": body, "url": shard.key}])))
        finally:
            body.close()
    return out


def test_storage_api(storage: Storage, prefix: str, tmp_path: Path) -> None:
    uri = f"{prefix}/a.bin"
    storage.check_access(prefix)
    storage.put_bytes(uri, b"0123456789")
    assert storage.get_bytes(uri, 2, 5) == b"234" and storage.get_bytes(uri, 7) == b"789"
    body, total = storage.get_stream(uri, 4)
    assert (body.read(3), body.read(), total) == (b"456", b"789", 10)
    body.close()
    body, total = storage.get_stream(uri, 10)
    assert (body.read(), total) == (b"", 10)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(6 * 2**20 + 5))  # > threshold: multipart, 2 parts of 5 MB
    multi = Storage(StorageConfig(multipart_threshold_mb=1, multipart_chunk_mb=5))
    multi.put_file(f"{prefix}/big", str(big), {"sha256": "abc"})
    assert storage.get_bytes(f"{prefix}/big") == big.read_bytes()
    assert storage.metadata(f"{prefix}/big") == {"sha256": "abc"}
    small = tmp_path / "small"
    small.write_bytes(b"other")
    for store, path in ((multi, big), (storage, small)):  # multipart / one PUT: create only
        with pytest.raises(PreconditionFailed, match="already exists"):
            store.put_file(f"{prefix}/big", str(path), {"sha256": "x"}, if_none_match=True)
    assert storage.get_bytes(f"{prefix}/big") == big.read_bytes()
    multi.put_file(f"{prefix}/big2", str(big), {"sha256": "abc"}, if_none_match=True)
    assert storage.get_bytes(f"{prefix}/big2") == big.read_bytes()
    assert storage.metadata(f"{prefix}/big2") == {"sha256": "abc"}
    storage.delete(f"{prefix}/big2")
    assert storage.list(prefix) == [uri, f"{prefix}/big"]
    assert storage.list(prefix + "-other") == []
    storage.delete(uri)
    assert not storage.exists(uri) and storage.size(uri) is None
    with pytest.raises(ObjectNotFound, match="a.bin"):
        storage.get_bytes(uri)


def test_round_trip_check_and_corruption(storage: Storage, prefix: str, jpeg_folder: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    dest = f"{prefix}/ds"
    m = write_shards(str(jpeg_folder), dest, storage=storage, shard_size_bytes=6000,
                     labels="folders", workers=2, progress=False)
    inputs = read_folder(jpeg_folder)
    by_key = {k.replace("/", "_").rsplit(".", 1)[0]: (k, v) for k, v in inputs.items()}
    samples = read_back(storage, dest)
    assert len(samples) == len(inputs) == m.total_samples == 24
    for s in samples:
        rel, data = by_key[s["__key__"]]
        assert s["jpg"] == data and m.classes[int(s["cls"])] == rel.split("/")[0]
    assert check_dataset(storage, dest, deep=True).ok
    assert main(["shards", "check", dest, "--deep"]) == 0
    first = m.shards[0]
    raw = storage.get_bytes(f"{dest}/{first.key}")
    storage.put_bytes(f"{dest}/{first.key}", raw[:-1024] + b"\x01" * 1024)
    kinds = {(p.shard, p.kind) for p in check_dataset(storage, dest).problems}
    assert kinds == {(first.key, "sha256")}
    capsys.readouterr()
    assert main(["shards", "check", dest]) == 1
    assert first.key in capsys.readouterr().out


def test_s3_source_resume_and_append(storage: Storage, prefix: str, jpeg_folder: Path) -> None:
    src = f"{prefix}/src"
    for rel, data in read_folder(jpeg_folder).items():
        storage.put_bytes(f"{src}/{rel}", data)
    storage.put_bytes(f"{src}/class_00/readme.txt", b"hello")
    dest = f"{prefix}/ds"
    crashing = CountingStorage(fail_at=3)
    with pytest.raises(RuntimeError, match="injected crash"):
        write_shards(src, dest, storage=crashing, samples_per_shard=4, workers=1,
                     labels="folders", progress=False)
    assert storage.list(dest) == [f"{dest}/shard-00000{i}.tar{x}" for i in range(2)
                                  for x in ("", ".idx.json")]  # no manifest yet
    counting = CountingStorage()
    m = write_shards(src, dest, storage=counting, samples_per_shard=4, workers=2,
                     labels="folders", progress=False)
    assert counting.puts == 4 and len(m.shards) == 6 and m.total_samples == 24
    assert [s["input"] for s in m.skipped] == [f"{src}/class_00/readme.txt"]
    keys = [s["__key__"] for s in read_back(storage, dest)]
    assert len(set(keys)) == 24
    with pytest.raises(ValueError, match="labelled"):
        write_shards("fashion-mnist:test", dest, storage=storage, max_samples=10,
                     append=True, labels="none", progress=False)
    extra = f"{prefix}/extra"
    storage.put_bytes(f"{extra}/class_01/new.jpg", read_folder(jpeg_folder)[
        "class_01/img_00001.jpg"])
    storage.put_bytes(f"{extra}/class_09/new.jpg", read_folder(jpeg_folder)[
        "class_02/img_00002.jpg"])
    app = write_shards(extra, dest, storage=storage, append=True, labels="folders",
                       progress=False)
    assert [s.key for s in app.shards] == [f"shard-00000{i}.tar" for i in range(6)] + [
        f"shard-000006-{app.shards[6].sha256[:12]}.tar"]  # appends are named by content
    assert app.shards[:6] == m.shards and app.shards[6].added_at > m.shards[5].added_at
    assert app.classes == ["class_00", "class_01", "class_02", "class_09"]
    assert check_dataset(storage, dest, deep=True).ok


def test_bad_storage_fails_before_upload(stack: Any, prefix: str, jpeg_folder: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-x1' does not exist"):
        write_shards(str(jpeg_folder), "s3://no-such-bucket-x1/ds", storage=Storage(),
                     progress=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StorageError, match="access to bucket 'corpus' denied"):
        write_shards(str(jpeg_folder), f"{prefix}/ds", storage=Storage(), progress=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # and no other source in boto3's chain:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(jpeg_folder / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(jpeg_folder / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with pytest.raises(StorageError, match="no AWS credentials found"):
        write_shards(str(jpeg_folder), f"{prefix}/ds", storage=Storage(), progress=False)
    monkeypatch.undo()
    assert Storage().list(prefix) == []  # nothing was uploaded by any of them
