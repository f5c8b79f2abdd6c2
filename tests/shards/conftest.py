"""Fixtures for the shards tests: tiny labelled JPEG folders (32x32, a few dozen images)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.shards.synthetic import write_jpeg_folder
from pipeline.storage import Storage


class CountingStorage(Storage):  # shared by the local and S3 writer tests
    """Counts uploads; raises an injected crash on upload number `fail_at` (1-based)."""

    def __init__(self, fail_at: int = 0) -> None:
        super().__init__()
        self.fail_at, self.puts = fail_at, 0

    def put_file(self, uri: str, path: str, metadata: dict[str, str] | None = None,
                 **kwargs: bool) -> None:
        self.puts += 1
        if self.puts == self.fail_at:
            raise RuntimeError("injected crash")
        super().put_file(uri, path, metadata, **kwargs)


def read_folder(folder: str | Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `folder`."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture
def jpeg_folder(tmp_path: Path) -> Path:
    """24 JPEGs of 32x32 in class_00 .. class_02 (8 each)."""
    folder = tmp_path / "src"
    write_jpeg_folder(str(folder), 24, width=32, height=32, classes=3, seed=1)
    return folder
