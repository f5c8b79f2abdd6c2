"""The baseline for `mocopipe bench ingest`: facebookresearch/moco's per-sample aug+ in pure PIL.

`reference_two_views` does what MoCo v2's data loader does for every sample: decode the full
image with Pillow, then per view RandomResizedCrop(scale) -> ColorJitter(0.4, 0.4, 0.4, 0.1)
with p=0.8 (random op order) -> RandomGrayscale(0.2) -> GaussianBlur(sigma 0.1-2.0, PIL) with
p=0.5 -> horizontal flip -> ToTensor + Normalize, i.e. float32 CHW. Nothing in training uses
it; `cpu_throughput` measures it against our path (`decode_image` + `two_views`) in one run.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from pipeline.augment import decode_image, decode_min_side, random_resized_crop_params, two_views
from pipeline.config import AugmentConfig


def _adjust_hue(im: Image.Image, shift: float) -> Image.Image:
    """torchvision's PIL hue adjustment: shift the H channel of HSV (uint8 wrap-around)."""
    if im.mode != "RGB":
        return im
    h, s, v = im.convert("HSV").split()
    np_h = (np.asarray(h, dtype=np.int16) + int(round(shift * 255))) % 256
    return Image.merge("HSV", (Image.fromarray(np_h.astype(np.uint8), "L"), s, v)).convert("RGB")


def _jitter(im: Image.Image, cfg: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    def factor(s: float) -> float:
        return float(rng.uniform(max(0.0, 1.0 - s), 1.0 + s))

    for op in rng.permutation(4):
        if op == 0:
            im = ImageEnhance.Brightness(im).enhance(factor(cfg.brightness))
        elif op == 1:
            im = ImageEnhance.Contrast(im).enhance(factor(cfg.contrast))
        elif op == 2 and im.mode == "RGB":
            im = ImageEnhance.Color(im).enhance(factor(cfg.saturation))
        elif op == 3:
            im = _adjust_hue(im, float(rng.uniform(-cfg.hue, cfg.hue)))
    return im


def _one_view(im: Image.Image, size: int, cfg: AugmentConfig,
              rng: np.random.Generator) -> np.ndarray:
    top, left, h, w = random_resized_crop_params(
        im.height, im.width, (cfg.crop_scale_min, cfg.crop_scale_max), rng)
    im = im.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < cfg.jitter_p:
        im = _jitter(im, cfg, rng)
    if rng.random() < cfg.gray_p and im.mode == "RGB":
        im = im.convert("L").convert("RGB")
    if rng.random() < cfg.blur_p:
        sigma = float(rng.uniform(cfg.blur_sigma_min, cfg.blur_sigma_max))
        im = im.filter(ImageFilter.GaussianBlur(radius=sigma))
    if rng.random() < cfg.flip_p:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    mean = np.asarray(cfg.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(cfg.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((arr - mean) / std)


def reference_two_views(data: bytes, size: int, cfg: AugmentConfig, rng: np.random.Generator,
                        channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """MoCo v2's per-sample path: full Pillow decode, two full aug+ views, float32 (C,H,W) each."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("L" if channels == 1 else "RGB")
    return _one_view(im, size, cfg, rng), _one_view(im, size, cfg, rng)


def ours_two_views(data: bytes, ext: str, size: int, cfg: AugmentConfig,
                   rng: np.random.Generator, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Our per-sample CPU path, as a reader runs it: DCT-downscaled decode + crop/flip twice."""
    img = decode_image(data, ext, channels, decode_min_side(size, cfg.crop_scale_min))
    return two_views(img, size, cfg, rng)


def cpu_throughput(images: Sequence[bytes], *, size: int, cfg: AugmentConfig,
                   channels: int = 3, rounds: int = 3, seed: int = 0) -> dict[str, float]:
    """Two-view samples per CPU-second (one core, this process) of ours vs the reference.

    The two paths alternate over ``rounds`` passes of ``images`` (JPEG bytes) so that both see
    the same machine load; time is this process's CPU time, so other processes on the
    machine do not count against either path. torch runs single-threaded meanwhile (as in a
    reader actor with ``num_cpus=1``); the previous thread count is restored.
    """
    if not images or rounds < 1:
        raise ValueError(f"cpu_throughput: need images and rounds >= 1, got {len(images)} "
                         f"images, rounds={rounds}")
    rng = np.random.default_rng(seed)
    paths: dict[str, Callable[[bytes], object]] = {
        "ours": lambda d: ours_two_views(d, "jpg", size, cfg, rng, channels),
        "reference": lambda d: reference_two_views(d, size, cfg, rng, channels),
    }
    spent = dict.fromkeys(paths, 0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for fn in paths.values():  # warm-up (imports, caches)
            fn(images[0])
        for _ in range(rounds):
            for name, fn in paths.items():
                t0 = time.process_time()
                for data in images:
                    fn(data)
                spent[name] += time.process_time() - t0
    finally:
        torch.set_num_threads(threads)
    n = rounds * len(images)
    ours = n / max(spent["ours"], 1e-9)
    ref = n / max(spent["reference"], 1e-9)
    return {"ours_samples_per_core_s": ours, "reference_samples_per_core_s": ref,
            "cpu_vs_reference": ours / ref, "samples": float(n)}
