"""Synthetic ImageNet-like JPEG folders for benchmarks and tests (no downloads).

Each image is a smooth colour field (a bilinearly upsampled coarse random grid) with a few
random filled shapes, a mid-frequency texture and mild pixel noise, so it compresses like a
photo: at 500x375, quality 90 the files land at about 100-120 KB (the noise level is adapted
per image to stay in that band). Files go to ``FOLDER/class_XX/img_XXXXX.jpg``, so
``--labels folders`` turns the sub-folders into labels. Everything is a function of `seed`.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw

TARGET_KB = (100, 120)  # size band aimed at, for the default 500x375 at quality 90


def _upsample(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float (h, w, C) array to (height, width, C)."""
    chans = [np.asarray(Image.fromarray(coarse[..., c].astype(np.float32), mode="F")
                        .resize((width, height), Image.BILINEAR)) for c in range(coarse.shape[2])]
    return np.stack(chans, axis=-1)


def _base_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour field + random shapes, uint8 RGB."""
    field = _upsample(rng.uniform(0, 255, size=(4, 5, 3)), height, width)
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1 + 8, y1 + 8), fill=colour)
        else:
            draw.rectangle((x0, y0, x1 + 8, y1 + 8), fill=colour)
    return img


def make_jpeg(rng: np.random.Generator, *, width: int = 500, height: int = 375,
              quality: int = 90, target_kb: tuple[int, int] | None = TARGET_KB) -> bytes:
    """One photo-like JPEG (H=height, W=width, 3 channels) as bytes.

    When `target_kb` is given the texture/noise amplitude is adjusted (up to 6 encodes) to
    bring the file size into that band; the result is the closest attempt.
    """
    base = np.asarray(_base_image(rng, width, height), dtype=np.float32)  # (H, W, 3)
    texture = _upsample(rng.normal(0, 1, size=(height // 4, width // 4, 3)), height, width)
    pixel = rng.normal(0, 1, size=(height, width, 1)).astype(np.float32)
    amp = 32.0  # lands near 110 KB at 500x375, quality 90 on the first encode
    best: tuple[float, bytes] | None = None
    for _ in range(6 if target_kb else 1):
        arr = base + amp * texture + 0.5 * amp * pixel
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB").save(
            buf, format="JPEG", quality=quality)
        data = buf.getvalue()
        if target_kb is None:
            return data
        kb = len(data) / 1024
        lo, hi = target_kb
        err = 0.0 if lo <= kb <= hi else min(abs(kb - lo), abs(kb - hi))
        if best is None or err < best[0]:
            best = (err, data)
        if err == 0.0:
            break
        # File size grows roughly linearly with the noise amplitude in this range.
        amp *= ((lo + hi) / 2) / max(kb, 1.0)
    assert best is not None
    return best[1]


def write_jpeg_folder(folder: str, n: int, *, width: int = 500, height: int = 375,
                      classes: int = 10, seed: int = 0, quality: int = 90) -> list[str]:
    """Write `n` JPEGs as ``folder/class_XX/img_XXXXX.jpg`` (image i in class i % classes).

    Returns the written paths in order. Sizes aim at ~100-120 KB for the default 500x375.
    """
    if n < 0:
        raise ValueError(f"write_jpeg_folder: n={n} must be >= 0")
    if classes < 1:
        raise ValueError(f"write_jpeg_folder: classes={classes} must be >= 1")
    if width < 8 or height < 8:
        raise ValueError(f"write_jpeg_folder: {width}x{height} is too small (min 8x8)")
    target = TARGET_KB if (width, height) == (500, 375) else None
    paths: list[str] = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        sub = os.path.join(folder, f"class_{i % classes:02d}")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"img_{i:05d}.jpg")
        with open(path, "wb") as f:
            f.write(make_jpeg(rng, width=width, height=height, quality=quality,
                              target_kb=target))
        paths.append(path)
    return paths
