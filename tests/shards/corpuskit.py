"""An img2dataset-style corpus for the index tests: ``{00000..N}.tar`` written with
webdataset's `ShardWriter`, keys ``000000000``..., ``.jpg``/``.webp``/``.png`` + ``.json`` +
``.txt`` members, failed downloads (samples without an image), a parquet side file, and one
tar with an extra member type the pipeline does not know (``.npy``)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = ("jpg", "webp", "png")


@dataclass
class Corpus:
    folder: Path
    tars: list[Path]
    images: dict[str, int]  # tar name -> samples with an image
    no_image: dict[str, int]  # tar name -> samples without one


def encode(ext: str, rng: np.random.Generator, size: int = 24, mode: str = "RGB") -> bytes:
    """A small random image in format `ext` (jpg/webp/png), Pillow mode `mode`."""
    channels = {"RGB": 3, "L": 1, "RGBA": 4, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (size, size + 4, channels), dtype=np.uint8)
    im = Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode)
    buf = io.BytesIO()
    im.save(buf, format={"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}[ext])
    return buf.getvalue()


def write_corpus(folder: Path, *, shards: int = 3, per_shard: int = 10, seed: int = 0) -> Corpus:
    """Write the corpus; every 7th sample has no image; shard 1 has ``.npy`` members."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images: dict[str, int] = {}
    no_image: dict[str, int] = {}
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(shards * per_shard):
            name = f"{i // per_shard:05d}.tar"
            key = f"{i:09d}"
            sample: dict[str, object] = {"__key__": key,
                                         "json": json.dumps({"key": key, "status": "ok"}),
                                         "txt": f"caption {i}"}
            if i % 7 == 3:
                sample["json"] = json.dumps({"key": key, "status": "failed_to_download"})
                no_image[name] = no_image.get(name, 0) + 1
            else:
                ext = FORMATS[i % 3]
                sample[ext] = encode(ext, rng)
                images[name] = images.get(name, 0) + 1
            if i // per_shard == 1:
                sample["npy"] = np.arange(3, dtype=np.int16).tobytes()
            sink.write(sample)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": [f"{i:09d}" for i in range(shards * per_shard)]}),
                   folder / "00000.parquet")
    tars = sorted(folder.glob("*.tar"))
    return Corpus(folder, tars, images, no_image)
