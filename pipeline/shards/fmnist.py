"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (idx files, gzip)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_FILES = {"train": "train", "test": "t10k"}
INSTALL_HINT = ("install it with `apt-get install -y dataset-fashion-mnist` "
                "(the Makefile does this when run as root)")


def fmnist_dir() -> Path:
    return Path(os.environ.get("MOCOPIPE_FMNIST_DIR", DEFAULT_DIR))


def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (magic: 0, 0, dtype code, ndim; then big-endian int32 dims)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated idx file ({arr.size} of {int(np.prod(dims))} bytes)")
    return arr.reshape(tuple(int(d) for d in dims))


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 28, 28), labels int64 (N,)) for split 'train' (60k) or 'test' (10k)."""
    if split not in _FILES:
        raise ValueError(f"fashion-mnist split {split!r}: expected 'train' or 'test'")
    root = fmnist_dir()
    prefix = _FILES[split]
    images = root / f"{prefix}-images-idx3-ubyte.gz"
    labels = root / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (images, labels):
        if not path.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file {path} is missing: {INSTALL_HINT}")
    x = _read_idx(images)
    y = _read_idx(labels).astype(np.int64)
    if len(x) != len(y):
        raise ValueError(f"Fashion-MNIST {split}: {len(x)} images but {len(y)} labels")
    return x, y
