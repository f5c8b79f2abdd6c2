"""write_shards on local folders: round trip, caps, determinism, resume, append, bad inputs."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.shards import writer as writer_mod
from pipeline.shards.fmnist import CLASSES, load_fashion_mnist
from pipeline.shards.manifest import ManifestError, read_manifest
from pipeline.shards.sources import sanitize_key
from pipeline.shards.writer import parse_size, write_shards
from pipeline.storage import Storage
from tests.shards.conftest import CountingStorage, read_folder

pytestmark = pytest.mark.unit


def read_back(dest: str | Path) -> list[dict[str, Any]]:
    """Every sample of the manifest's shards, in order, via webdataset's tar iteration."""
    m = read_manifest(Storage(), str(dest))
    urls = [os.path.join(str(dest), s.key) for s in m.shards]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def write(src: Any, dest: Any, **kw: Any):  # -> Manifest
    kw.setdefault("storage", Storage())
    kw.setdefault("progress", False)
    kw.setdefault("workers", 2)
    return write_shards(str(src), str(dest), **kw)


def test_parse_size() -> None:
    assert parse_size("256MB") == 256 * 2**20
    assert parse_size("64mb") == 64 * 2**20
    assert parse_size("1MiB") == parse_size("1M") == 2**20
    assert parse_size("1.5GB") == int(1.5 * 2**30)
    assert parse_size("512KB") == 512 * 1024
    assert parse_size("4096") == 4096
    for bad in ("", "MB", "12 parsecs", "-5MB", "0"):
        with pytest.raises(ValueError, match="shard-size"):
            parse_size(bad)


def test_sanitize_key() -> None:
    assert sanitize_key("class_00/img 1.v2.jpg") == "class_00_img_1_v2"
    long = sanitize_key("d/" + "x" * 200 + ".png")
    assert len(long) == 80 and "." not in long and "/" not in long


def test_folder_round_trip_with_labels(jpeg_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    m = write(jpeg_folder, dest, samples_per_shard=5, labels="folders")
    assert m.shard_counts() == [(f"shard-00000{i}.tar", 5) for i in range(4)] + \
        [("shard-000004.tar", 4)]
    assert (m.labelled, m.classes, m.total_samples) == (True, ["class_00", "class_01",
                                                               "class_02"], 24)
    assert m.total_bytes == sum(os.path.getsize(dest / s.key) for s in m.shards)
    inputs = read_folder(jpeg_folder)
    samples = read_back(dest)
    assert len(samples) == len(inputs) == 24
    seen = set()
    for s in samples:
        rel = next(r for r in inputs if sanitize_key(r) == s["__key__"])
        assert s["jpg"] == inputs[rel]  # original bytes, no re-encode
        assert m.classes[int(s["cls"])] == rel.split("/")[0]
        seen.add(rel)
    assert seen == set(inputs)


def test_size_cap_determinism_and_rerun(jpeg_folder: Path, tmp_path: Path) -> None:
    a = write(jpeg_folder, tmp_path / "a", shard_size_bytes=4000)
    b = write(jpeg_folder, tmp_path / "b", shard_size_bytes=4000, workers=1)
    assert len(a.shards) > 3
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert not a.labelled and a.classes == []  # auto: folders are unlabelled
    counting = CountingStorage()
    again = write(jpeg_folder, tmp_path / "a", shard_size_bytes=4000, storage=counting)
    assert counting.puts == 0  # every shard already stored with the same sha256
    assert again.sha256 == a.sha256  # nothing changed: the manifest is kept as it was
    capped = write(jpeg_folder, tmp_path / "c", max_samples=7, labels="none")
    assert capped.total_samples == 7 and not capped.labelled and capped.classes == []
    assert all("cls" not in s for s in read_back(tmp_path / "c"))


def test_fashion_mnist_source(tmp_path: Path) -> None:
    m = write("fashion-mnist:test", tmp_path / "fm", max_samples=200, samples_per_shard=64)
    assert [n for _, n in m.shard_counts()] == [64, 64, 64, 8]
    assert m.classes == CLASSES and m.labelled
    x, y = load_fashion_mnist("test")
    for i, s in enumerate(read_back(tmp_path / "fm")):
        assert s["__key__"] == f"test-{i:06d}"
        assert int(s["cls"]) == y[i]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(s["png"]))), x[i])


def test_bad_inputs_are_skipped_and_recorded(jpeg_folder: Path, tmp_path: Path) -> None:
    good = (jpeg_folder / "class_00" / "img_00000.jpg").read_bytes()
    (jpeg_folder / "class_00" / "notes.txt").write_text("hello")
    (jpeg_folder / "class_01" / "fake.jpg").write_text("not a jpeg")
    (jpeg_folder / "class_01" / "trunc.jpg").write_bytes(good[: len(good) * 2 // 3])
    (jpeg_folder / "class_02" / "empty.png").write_bytes(b"")
    (jpeg_folder / "top.jpg").write_bytes(good)
    m = write(jpeg_folder, tmp_path / "ds", labels="folders")
    reasons = {os.path.relpath(s["input"], jpeg_folder): s["reason"] for s in m.skipped}
    assert set(reasons) == {"class_00/notes.txt", "class_01/fake.jpg", "class_01/trunc.jpg",
                            "class_02/empty.png", "top.jpg"}
    assert reasons["top.jpg"] == "not inside a class sub-folder (--labels folders)"
    assert "unsupported extension .txt" in reasons["class_00/notes.txt"]
    assert "not an image" in reasons["class_01/fake.jpg"]
    assert "truncated" in reasons["class_01/trunc.jpg"]
    assert reasons["class_02/empty.png"] == "empty file"
    assert m.total_samples == 24 and len(read_back(tmp_path / "ds")) == 24


def test_empty_and_unusable_sources_fail_before_upload(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        write(tmp_path / "empty", tmp_path / "d1")
    assert not (tmp_path / "d1").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("text")
    (bad / "b.txt").write_text("text")
    with pytest.raises(ValueError, match="none of 1 inputs is a readable image"):
        write(bad, tmp_path / "d2")
    assert Storage().list(str(tmp_path / "d2")) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write(tmp_path / "nope", tmp_path / "d3")
    with pytest.raises(ValueError, match="labels="):
        write(bad, tmp_path / "d4", labels="maybe")


def test_resume_after_crash_between_shards(jpeg_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    crashing = CountingStorage(fail_at=3)
    with pytest.raises(RuntimeError, match="injected crash"):
        write(jpeg_folder, dest, samples_per_shard=4, storage=crashing, workers=1)
    assert sorted(os.listdir(dest)) == ["shard-000000.tar", "shard-000000.tar.idx.json",
                                        "shard-000001.tar", "shard-000001.tar.idx.json"]
    counting = CountingStorage()
    m = write(jpeg_folder, dest, samples_per_shard=4, storage=counting)
    assert counting.puts == len(m.shards) - 2 == 4
    keys = [s["__key__"] for s in read_back(dest)]
    assert len(keys) == len(set(keys)) == 24


def test_crash_mid_shard_never_exposes_a_partial_shard(jpeg_folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = writer_mod.validate_image

    def failing(data: bytes, ext: str) -> str:
        calls["n"] += 1
        if calls["n"] == 11:
            raise RuntimeError("injected crash while reading input 11")
        return real(data, ext)

    monkeypatch.setattr(writer_mod, "validate_image", failing)
    dest = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="injected crash"):
        write(jpeg_folder, dest, samples_per_shard=4, workers=1)
    stored = sorted(os.listdir(dest)) if dest.exists() else []
    assert "manifest.json" not in stored
    shards = [n for n in stored if n.endswith(".tar")]
    assert shards == ["shard-000000.tar", "shard-000001.tar"][: len(shards)]
    for name in shards:  # whatever was stored is a complete 4-sample shard
        assert len(list(wds.WebDataset(str(dest / name), shardshuffle=False))) == 4


def test_append_adds_shards_and_is_idempotent(jpeg_folder: Path, tmp_path: Path) -> None:
    from pipeline.shards.synthetic import write_jpeg_folder

    dest = tmp_path / "ds"
    first = write(jpeg_folder, dest, samples_per_shard=10, labels="folders")
    extra = tmp_path / "extra"
    write_jpeg_folder(str(extra / "tmp"), 6, width=32, height=32, classes=2, seed=7)
    os.rename(extra / "tmp" / "class_00", extra / "class_00")
    os.rename(extra / "tmp" / "class_01", extra / "class_03")  # a new class
    os.rmdir(extra / "tmp")
    m = write(extra, dest, append=True, labels="folders", samples_per_shard=10)
    assert m.shards[: len(first.shards)] == first.shards
    new = m.shards[len(first.shards):]
    # appended shards are named by content: a concurrent append cannot take the same name
    assert [s.key for s in new] == [f"shard-000003-{new[0].sha256[:12]}.tar"]
    assert new[0].added_at > first.shards[-1].added_at
    assert m.classes == ["class_00", "class_01", "class_02", "class_03"]
    assert m.total_samples == 30 and m.created_at == first.created_at
    labels = {s["__key__"]: int(s["cls"]) for s in read_back(dest)}
    assert labels["class_03_img_00001"] == 3 and labels["class_00_img_00000"] == 0
    again = write(extra, dest, append=True, labels="folders", samples_per_shard=10)
    assert again.sha256 == m.sha256 == read_manifest(Storage(), str(dest)).sha256
    with pytest.raises(ValueError, match="labelled"):
        write(extra, dest, append=True, labels="none")
    (dest / "manifest.json").write_text("{broken")
    with pytest.raises(ManifestError):
        write(extra, dest, append=True)
