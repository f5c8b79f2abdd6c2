"""Tiny WebDataset shards for ingest tests: small JPEGs whose pixels encode their identity."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image


def jpeg_bytes(seed: int, side: int = 40) -> bytes:
    """A small, smooth RGB JPEG (side x side) that differs per seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, mode="RGB").resize((side, side), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def shard_bytes(shard: int, count: int, *, side: int = 40, pad_bytes: int = 0,
                bad_jpeg: frozenset[int] = frozenset(),
                no_image: frozenset[int] = frozenset()) -> bytes:
    """A tar with `count` samples ``s{shard}_{i}.jpg`` + ``.cls``; ``pad_bytes`` adds an
    incompressible ``.bin`` member per sample (makes a corpus big without decode cost).
    Samples in ``bad_jpeg`` get garbage image bytes, those in ``no_image`` only a ``.cls``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(count):
            key = f"s{shard:03d}_{i:05d}"
            jpg = b"\xff\xd8 not a jpeg" if i in bad_jpeg else jpeg_bytes(shard * 100_000 + i, side)
            members = {"jpg": jpg, "cls": str(i % 10).encode()}
            if i in no_image:
                del members["jpg"]
            if pad_bytes:
                members["bin"] = np.random.default_rng(i).bytes(pad_bytes)
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_local(folder: str, counts: list[int], **kw: int) -> list[tuple[str, int]]:
    """Write shards ``shard-%06d.tar`` with the given sample counts; returns (key, count)."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for s, n in enumerate(counts):
        key = f"shard-{s:06d}.tar"
        with open(os.path.join(folder, key), "wb") as f:
            f.write(shard_bytes(s, n, **kw))
        out.append((key, n))
    return out
