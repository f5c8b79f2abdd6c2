"""`shards check` / `shards ls` / `shards write` on local datasets, through the library and CLI."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.shards.check import check_dataset
from pipeline.shards.synthetic import make_jpeg, write_jpeg_folder
from pipeline.shards.writer import write_shards
from pipeline.storage import Storage

pytestmark = pytest.mark.unit


def _dataset(src: Path, dest: Path) -> None:
    write_shards(str(src), str(dest), storage=Storage(), samples_per_shard=6, workers=2,
                 labels="folders", progress=False)


def _overwrite_member(shard: Path, index: int, fill: bytes) -> None:
    """Overwrite the bytes of tar member `index` in place (same length: the tar stays valid)."""
    with tarfile.open(shard) as tar:
        member = tar.getmembers()[index]
    with open(shard, "r+b") as f:
        f.seek(member.offset_data)
        f.write((fill * member.size)[: member.size])


def test_clean_dataset_passes(jpeg_folder: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "ds"
    _dataset(jpeg_folder, dest)
    report = check_dataset(Storage(), str(dest), deep=True)
    assert report.ok and report.samples_seen == 24 and report.images_decoded == 24
    assert main(["shards", "check", str(dest), "--deep"]) == 0
    assert "24/24 samples, 24 images decoded: OK" in capsys.readouterr().out
    assert main(["shards", "ls", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "shards       4" in out and "samples      24" in out and "classes      3" in out


def test_corruptions_are_reported(jpeg_folder: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "ds"
    _dataset(jpeg_folder, dest)
    _overwrite_member(dest / "shard-000000.tar", 1, b"\x00")  # sample 0's jpg zeroed
    _overwrite_member(dest / "shard-000001.tar", 0, b"9")  # sample 6's cls -> "9"
    (dest / "shard-000002.tar").unlink()
    data = (dest / "shard-000003.tar").read_bytes()
    (dest / "shard-000003.tar").write_bytes(data[: len(data) // 2])
    shallow = check_dataset(Storage(), str(dest))
    kinds = {(p.shard, p.kind) for p in shallow.problems}
    assert ("shard-000000.tar", "sha256") in kinds
    assert ("shard-000001.tar", "sha256") in kinds
    assert ("shard-000002.tar", "missing") in kinds
    assert ("shard-000003.tar", "size") in kinds
    assert ("shard-000003.tar", "tar") in kinds or ("shard-000003.tar", "samples") in kinds
    assert ("shard-000000.tar", "decode") not in kinds  # only --deep decodes
    deep = check_dataset(Storage(), str(dest), deep=True)
    assert ("shard-000000.tar", "decode") in {(p.shard, p.kind) for p in deep.problems}
    assert main(["shards", "check", str(dest), "--deep"]) == 1
    out = capsys.readouterr().out
    assert "SHARD" in out and "shard-000002.tar" in out and "missing" in out
    assert "problem(s)" in out


def test_label_out_of_range_and_unlisted_shards(jpeg_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    _dataset(jpeg_folder, dest)
    _overwrite_member(dest / "shard-000001.tar", 0, b"7")  # cls 7 of 3 classes
    (dest / "shard-000009.tar").write_bytes(b"left over")
    report = check_dataset(Storage(), str(dest))
    assert any(p.kind == "label" and "cls b'7'" in p.detail for p in report.problems)
    assert report.unlisted == ["shard-000009.tar"]


def test_cli_write_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    write_jpeg_folder(str(src), 6, width=32, height=32, classes=2)
    dest = tmp_path / "ds"
    assert main(["shards", "write", str(src), str(dest), "--shard-size", "4KB", "--workers",
                 "2", "--labels", "folders", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "wrote 6 samples in" in captured.out and "samples/s" in captured.out
    assert "img/s" not in captured.err  # --quiet: no progress bar, the summary stays
    assert main(["shards", "ls", str(dest), "--json"]) == 0
    assert '"total_samples": 6' in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["shards", "write", str(tmp_path / "empty"), str(tmp_path / "x")]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["shards", "write", str(src), str(dest), "--shard-size", "lots"]) == 2
    assert main(["shards", "check", str(tmp_path / "nothing")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_synthetic_jpegs_look_like_photos(tmp_path: Path) -> None:
    import numpy as np

    paths = write_jpeg_folder(str(tmp_path), 3, classes=2)
    assert [Path(p).relative_to(tmp_path).as_posix() for p in paths] == [
        "class_00/img_00000.jpg", "class_01/img_00001.jpg", "class_00/img_00002.jpg"]
    sizes = [Path(p).stat().st_size / 1024 for p in paths]
    assert all(100 <= kb <= 120 for kb in sizes), sizes
    again = make_jpeg(np.random.default_rng([0, 1]))
    assert again == Path(paths[1]).read_bytes()  # a function of (seed, index)
