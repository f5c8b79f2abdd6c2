"""Hostile labels in eval shards: one-line `LabelError` naming the shard, no huge allocation.

Table: the `.cls` bytes of the second sample of shard-000000.tar -> the error's wording.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pipeline.eval.features import LabelError, load_labelled
from pipeline.ingest.tario import iter_members
from pipeline.shards.writer import write_shards
from pipeline.storage import Storage

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]


class _File:
    def __init__(self, data: bytes) -> None:
        self.buf = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        return self.buf.read(n)

    def skip(self, n: int) -> int:
        return len(self.buf.read(n))


@pytest.fixture(scope="module")
def fmnist_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("eval") / "fmnist"
    write_shards("fashion-mnist:test", str(dest), storage=Storage(), max_samples=8,
                 samples_per_shard=4, workers=1, progress=False)
    return dest


def _with_label(src: Path, dest: Path, label: bytes | None) -> None:
    """Copy the dataset; sample 1 of shard-000000.tar gets `.cls` = label (None: dropped)."""
    dest.mkdir()
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    shard = dest / "shard-000000.tar"
    members = list(iter_members(_File(shard.read_bytes())))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i, (name, data) in enumerate(members):
            if i == 2 and name.endswith(".cls"):  # members: 0.cls 0.png 1.cls 1.png ...
                if label is None:
                    continue
                data = label
            info = tarfile.TarInfo(name)
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data or b""))
    shard.write_bytes(out.getvalue())


CASES = [
    (b"999999999", "outside \\[0, 10\\)"),
    (b"10", "outside \\[0, 10\\)"),
    (b"-1", "bad .cls label"),
    (b"1e9", "bad .cls label"),
    (b"99999999999999999999", "bad .cls label"),
    (b"\xff\xfe", "bad .cls label"),
    (None, "no .cls label"),
]


@pytest.mark.parametrize("label,message", CASES)
def test_bad_label_names_the_shard(fmnist_small: Path, tmp_path: Path, label: bytes | None,
                                   message: str) -> None:
    dest = tmp_path / "ds"
    _with_label(fmnist_small, dest, label)
    with pytest.raises(LabelError, match=f"/shard-000000.tar: sample .*{message}") as err:
        load_labelled(Storage(), str(dest), channels=1, image_size=28)
    assert str(err.value).startswith(f"{dest}/shard-000000.tar: ") and "\n" not in str(err.value)


def test_clean_copy_loads(fmnist_small: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    _with_label(fmnist_small, dest, b"7")
    _, labels = load_labelled(Storage(), str(dest), channels=1, image_size=28)
    assert labels.shape == (8,) and labels[1] == 7 and labels.max() < 10
