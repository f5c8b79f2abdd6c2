"""Decompression bombs are refused on every decode path before pixels are decoded; every
format of an img2dataset corpus decodes with the same crop semantics."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.augment.cpu import MAX_PIXELS, ImageTooLarge, decode_image, two_views
from pipeline.config import AugmentConfig

pytestmark = pytest.mark.unit


def _encode(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=fmt)
    return buf.getvalue()


def _photo(h: int = 40, w: int = 56) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.uint8)


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode(_photo(), "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline SOF0: marker, length(2), precision(1), H, W
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode(_photo(), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def _webp_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode(_photo(), "WEBP"))
    start = data.index(b"\x9d\x01\x2a")  # VP8 key frame start code, then 14-bit W and H
    data[start + 3:start + 7] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    return bytes(data)


@pytest.mark.parametrize("make, ext", [(_jpeg_claiming, "jpg"), (_png_claiming, "png"),
                                       (_webp_claiming, "webp")])
@pytest.mark.parametrize("side", [10000, 16000])  # 100 MP (under Pillow's own limit), 256 MP
def test_bombs_are_refused_from_the_header_on_every_path(make: object, ext: str,
                                                        side: int) -> None:
    bomb = make(side, side)  # type: ignore[operator]  # a few KB of data
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="exceeds"):
        decode_image(bomb, ext, 3)
    with pytest.raises(ValueError):  # what the readers catch: counted as a corrupt sample
        decode_image(bomb, ext, 3, min_side=64)
    assert time.perf_counter() - t0 < 2.0  # refused before any pixel is decoded
    assert side * side > MAX_PIXELS


def test_the_cap_is_a_parameter_and_normal_images_pass() -> None:
    data = _encode(_photo(), "JPEG")
    assert decode_image(data, "jpg", 3).shape == (40, 56, 3)
    with pytest.raises(ImageTooLarge):
        decode_image(data, "jpg", 3, max_pixels=40 * 56 - 1)
    with pytest.raises(ImageTooLarge):  # CMYK JPEGs take the Pillow path: capped there too
        decode_image(_cmyk_jpeg(), "jpg", 3, max_pixels=100)


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_photo()).convert("CMYK").save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("fmt, ext, mode", [("JPEG", "jpg", "RGB"), ("JPEG", "jpg", "L"),
                                            ("JPEG", "jpg", "CMYK"), ("WEBP", "webp", "RGB"),
                                            ("WEBP", "webp", "RGBA"), ("PNG", "png", "RGBA"),
                                            ("PNG", "png", "LA")])
def test_every_corpus_format_gives_the_same_views(fmt: str, ext: str, mode: str) -> None:
    """Same size image in each format/mode: two_views with one seed crops the same boxes."""
    img = Image.fromarray(_photo(64, 96)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    arr = decode_image(buf.getvalue(), ext, 3)
    assert arr.shape == (64, 96, 3) and arr.dtype == np.uint8
    ref = decode_image(_encode(_photo(64, 96), "PNG"), "png", 3)
    v1, v2 = two_views(arr, 16, AugmentConfig(), np.random.default_rng(5))
    r1, r2 = two_views(ref, 16, AugmentConfig(), np.random.default_rng(5))
    assert v1.shape == v2.shape == (3, 16, 16)
    if mode in ("RGB", "RGBA") and fmt != "JPEG":  # lossless: identical pixels, same crops
        assert np.array_equal(v1, r1) and np.array_equal(v2, r2)


def test_jpeg_uses_dct_downscale_and_png_webp_reduce() -> None:
    big = _photo(512, 768)
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")):
        arr = decode_image(_encode(big, fmt), ext, 3, min_side=100)
        assert arr.shape == (128, 192, 3), fmt  # 1/4 scale keeps the shorter side >= 100
