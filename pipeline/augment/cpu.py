"""MoCo v2 "aug+" split in two: a per-sample CPU part on the readers, a batched part on the device.

CPU part (numpy / Pillow, runs in the reader actors, output uint8 so batches travel cheaply):

- `decode_image`: JPEG via simplejpeg (libjpeg-turbo) with DCT-domain downscaling, everything
  else (PNG, WebP, CMYK JPEGs, ...) via Pillow; HxWxC uint8 with C = ``channels``.
- `two_views`: per view a RandomResizedCrop (torchvision's sampling) + horizontal flip; the
  crop+resize is torch's antialiased bilinear uint8 kernel (faster than Pillow here). Run it
  with one torch thread per reader core (``torch.set_num_threads``): on a busy machine extra
  OpenMP threads cost more CPU time than they save.
- `eval_view`: resize the shorter side + center crop (evaluation, kNN monitor).

Device part (torch, on the batch's device, per-sample parameters from a `torch.Generator`):
`BatchAugment` (colour jitter, grayscale, Gaussian blur, normalisation) and `normalize`;
it lives in `pipeline.augment.device` and is re-exported here.

DCT downscaling rule. The random-resized crop keeps at least ``crop_scale_min`` of the image
area; a square crop of that area from an image whose shorter side is S has side
``sqrt(crop_scale_min) * S``. `decode_min_side(size, crop_scale_min)` returns
``ceil(size / sqrt(crop_scale_min))`` (501 for 224 px at scale 0.2): decoding to a shorter side
of at least that means a minimum-scale square crop is never upsampled because of the
downscaled decode (a crop at the extreme 3/4 or 4/3 aspect ratio may be stretched by at most
sqrt(4/3) along one axis, as it would be from the full image of that size). `decode_image`
only uses the power-of-two scales 1/2, 1/4, 1/8 (libjpeg-turbo's fast paths; the other n/8
scales can be slower than a full decode). EXIF orientation is ignored, as in torchvision.
"""

from __future__ import annotations

import io
import math

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.augment.device import BatchAugment, normalize  # noqa: F401 - re-exported
from pipeline.config import AugmentConfig

__all__ = [
    "MAX_PIXELS",
    "BatchAugment",
    "ImageTooLarge",
    "decode_image",
    "decode_min_side",
    "eval_view",
    "normalize",
    "random_resized_crop_params",
    "two_views",
]

JPEG_EXTS = frozenset({"jpg", "jpeg", "jpe", "jfif"})
_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Decompression-bomb cap: an image whose header claims more pixels than this is refused before
# any pixel is decoded (8192 x 8192; 192 MiB as RGB). Below Pillow's own error threshold
# (2 x Image.MAX_IMAGE_PIXELS, ~179 MP), which would let a 170 MP PNG through.
MAX_PIXELS = 8192 * 8192


class ImageTooLarge(ValueError):
    """The header announces more than `max_pixels` pixels (a decompression bomb)."""


def _check_pixels(height: int, width: int, fmt: str, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise ImageTooLarge(f"{fmt} image of {width}x{height} = {height * width} pixels exceeds "
                            f"the decode cap of {max_pixels} pixels")


def decode_min_side(size: int, crop_scale_min: float) -> int:
    """Shorter side to decode to so a minimum-scale square crop still has >= ``size`` pixels."""
    if size < 1 or not 0.0 < crop_scale_min <= 1.0:
        raise ValueError(f"decode_min_side: need size >= 1 and 0 < crop_scale_min <= 1, "
                         f"got size={size}, crop_scale_min={crop_scale_min}")
    return math.ceil(size / math.sqrt(crop_scale_min))


def _pow2_factor(height: int, width: int, min_side: int | None) -> int:
    """Largest k in (1, 2, 4, 8) whose 1/k-scaled shorter side is still >= ``min_side``."""
    if not min_side or min_side <= 0:
        return 1
    short = min(height, width)
    for k in (8, 4, 2):
        if -(-short // k) >= min_side:
            return k
    return 1


def _decode_simplejpeg(data: bytes, channels: int, min_side: int | None,
                       max_pixels: int) -> np.ndarray | None:
    """simplejpeg fast path; None when the file needs Pillow (CMYK/YCCK, odd headers).
    Raises ImageTooLarge when the header's size exceeds `max_pixels` (nothing decoded)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    _check_pixels(height, width, "JPEG", max_pixels)
    if colorspace not in ("YCbCr", "Gray", "RGB"):
        return None  # CMYK / YCCK: Pillow handles Adobe's inverted CMYK correctly
    k = _pow2_factor(height, width, min_side)
    try:
        return simplejpeg.decode_jpeg(
            data,
            colorspace="GRAY" if channels == 1 else "RGB",
            min_height=-(-height // k) if k > 1 else 0,
            min_width=-(-width // k) if k > 1 else 0,
        )
    except ValueError:
        return None  # truncated or unusual: let Pillow decide (it raises if it cannot)


def _pil_to_array(im: Image.Image, channels: int) -> np.ndarray:
    """Any Pillow mode -> HxWxC uint8 (16-bit and float modes scaled/clipped to 0..255)."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(a / 257.0, 0, 255).round().astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).round().astype(np.uint8), "L")
    elif im.mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")
    im = im.convert("L" if channels == 1 else "RGB")
    arr = np.array(im)  # a writable copy, like simplejpeg's output
    return arr[:, :, None] if channels == 1 else arr


def _decode_pillow(data: bytes, channels: int, min_side: int | None,
                   max_pixels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:  # reads the header only
        _check_pixels(im.height, im.width, im.format or "image", max_pixels)
        k = _pow2_factor(im.height, im.width, min_side)
        if k > 1 and im.format == "JPEG":
            im.draft("L" if channels == 1 else "RGB",
                     (-(-im.width // k), -(-im.height // k)))
        im.load()
        if k > 1 and im.format != "JPEG":
            im = im.reduce(k)
        return _pil_to_array(im, channels)


def decode_image(data: bytes, ext: str, channels: int, min_side: int | None = None,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an HxWxC uint8 array, C = ``channels`` (1 = luma, 3 = RGB).

    Args:
        data: the encoded file (JPEG, PNG, WebP, or anything Pillow reads).
        ext: the tar member's extension ("jpg", ".JPEG", "png", ...); picks the fast path only,
            mislabelled files still decode through Pillow.
        channels: 1 or 3.
        min_side: if given, the image may be decoded downscaled (power-of-two DCT scaling for
            JPEG, box reduction otherwise) as long as its shorter side stays >= ``min_side``
            (see `decode_min_side`). Images already smaller are returned at full size.
        max_pixels: images whose header announces more pixels are refused before decoding
            (decompression bombs), on every path (simplejpeg, Pillow).

    Raises:
        ValueError: the bytes cannot be decoded, or the image is too large (`ImageTooLarge`);
            the reader counts the sample as corrupt.
    """
    if channels not in (1, 3):
        raise ValueError(f"decode_image: channels must be 1 or 3, got {channels}")
    ext = ext.lower().lstrip(".")
    if ext in JPEG_EXTS:
        arr = _decode_simplejpeg(data, channels, min_side, max_pixels)
        if arr is not None:
            return arr
    try:
        arr = _decode_pillow(data, channels, min_side, max_pixels)
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError as err:  # Pillow's own check, at open, above ~179 MP
        raise ImageTooLarge(f"{ext or 'unknown'} image: {err}") from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, DecompressionBombError ...
        raise ValueError(
            f"cannot decode {ext or 'unknown'} image ({len(data)} bytes): "
            f"{type(err).__name__}: {err}"
        ) from err
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"decoded {ext} image is empty: shape {arr.shape}")
    return arr


def random_resized_crop_params(
    height: int, width: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling: (top, left, crop_h, crop_w).

    Up to 10 tries of (area fraction ~ U(scale), log aspect ~ U(log 3/4, log 4/3)); if none
    fits, a center crop of the whole image clamped to the aspect range.
    """
    area = height * width
    log_lo, log_hi = math.log(_RATIO[0]), math.log(_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < _RATIO[0]:
        w, h = width, int(round(width / _RATIO[0]))
    elif in_ratio > _RATIO[1]:
        h, w = height, int(round(height * _RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _as_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 array -> (1,C,H,W) uint8 tensor view (channels-last strides, no copy)."""
    if img.ndim != 3 or img.shape[2] not in (1, 3) or img.dtype != np.uint8:
        raise ValueError(f"expected an HxWxC uint8 image with C in (1, 3), got "
                         f"shape {img.shape} dtype {img.dtype}")
    if not img.flags.writeable:  # torch.from_numpy warns on read-only arrays
        img = img.copy()
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)


def _resized_crop(t: torch.Tensor, top: int, left: int, h: int, w: int, size: int,
                  flip: bool) -> np.ndarray:
    """Crop (1,C,H,W) uint8 to the box, resize to size x size (antialiased bilinear), CHW uint8.

    torch's uint8 channels-last antialiased bilinear kernel is ~1.5x faster than Pillow's
    resize here and needs no Pillow image copy; only the box's pixels are used.
    """
    crop = t[:, :, top:top + h, left:left + w]
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)[0]
    return (out.flip(-1) if flip else out).contiguous().numpy()


def two_views(
    img: np.ndarray, size: int, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The per-sample part of aug+ twice: random resized crop to size x size + horizontal flip.

    Args:
        img: HxWxC uint8 (from `decode_image`).
        size: output side in pixels.
        cfg: crop_scale_min/max and flip_p are used.
        rng: the only source of randomness (per view: crop box, then flip).

    Returns:
        Two CxHxW uint8 arrays (C as the input, H = W = size).
    """
    t = _as_tensor(img)
    height, width = img.shape[:2]
    views = []
    for _ in range(2):
        top, left, h, w = random_resized_crop_params(
            height, width, (cfg.crop_scale_min, cfg.crop_scale_max), rng
        )
        views.append(_resized_crop(t, top, left, h, w, size, bool(rng.random() < cfg.flip_p)))
    return views[0], views[1]


def eval_view(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and center-crop size x size, in one resample
    (the centered square is cropped first, then resized).

    Args:
        img: HxWxC uint8. Returns: CxHxW uint8, H = W = size.
    """
    t = _as_tensor(img)
    height, width = img.shape[:2]
    side = min(height, width)  # the centered square that the crop keeps
    return _resized_crop(t, (height - side) // 2, (width - side) // 2, side, side, size, False)
