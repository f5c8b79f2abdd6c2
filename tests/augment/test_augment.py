"""aug+: decode, per-sample crop/flip (CPU) and the batched jitter/gray/blur/normalise (torch)."""

from __future__ import annotations

import colorsys
import dataclasses
import io
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.augment import (
    BatchAugment,
    decode_image,
    decode_min_side,
    eval_view,
    normalize,
    random_resized_crop_params,
    two_views,
)
from pipeline.augment.device import blur_kernel_size
from pipeline.config import AugmentConfig
from pipeline.bench.reference import cpu_throughput, reference_two_views

pytestmark = pytest.mark.unit

NO_AUG = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread avoids OpenMP spin-waits on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth colourful HxWx3 uint8 image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------- decode


def test_decode_jpeg_matches_pillow() -> None:
    data = encode(Image.fromarray(photo()), "JPEG", quality=95)
    arr = decode_image(data, "jpg", 3)
    assert arr.shape == (48, 64, 3) and arr.dtype == np.uint8
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    assert np.abs(arr.astype(np.int16) - ref).mean() < 1.5
    gray = decode_image(data, ".JPEG", 1)
    assert gray.shape == (48, 64, 1)


def test_decode_grayscale_jpeg_to_rgb_has_equal_channels() -> None:
    data = encode(Image.fromarray(photo()[:, :, 0], "L"), "JPEG")
    arr = decode_image(data, "jpeg", 3)
    assert arr.shape == (48, 64, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_decode_cmyk_jpeg_goes_through_pillow() -> None:
    cmyk = Image.fromarray(photo(), "RGB").convert("CMYK")
    data = encode(cmyk, "JPEG", quality=95)
    arr = decode_image(data, "jpg", 3)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    assert arr.shape == (48, 64, 3)
    assert np.array_equal(arr, expected)


@pytest.mark.parametrize(
    ("img", "fmt", "ext"),
    [
        (Image.fromarray(photo()), "PNG", "png"),
        (Image.fromarray(photo()).convert("RGBA"), "PNG", "png"),
        (Image.fromarray(photo()).convert("P"), "PNG", "png"),
        (Image.fromarray(photo()[:, :, 1], "L"), "PNG", "png"),
        (Image.fromarray(photo()), "WEBP", "webp"),
        (Image.fromarray(photo()), "PNG", "jpg"),  # mislabelled: still decodes
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_decode_pillow_formats(img: Image.Image, fmt: str, ext: str, channels: int) -> None:
    arr = decode_image(encode(img, fmt), ext, channels)
    assert arr.shape == (48, 64, channels) and arr.dtype == np.uint8
    assert arr.std() > 10  # real content, not a blank


def test_decode_16bit_png_is_scaled_not_clipped() -> None:
    ramp = (np.arange(64, dtype=np.uint16)[None].repeat(8, 0) * 1000).astype(np.uint16)
    arr = decode_image(encode(Image.fromarray(ramp), "PNG"), "png", 1)
    assert arr.shape == (8, 64, 1)
    np.testing.assert_allclose(arr[0, :, 0], np.round(ramp[0] / 257.0), atol=1)


@pytest.mark.parametrize("ext", ["jpg", "png", "webp", ""])
def test_undecodable_bytes_raise_value_error(ext: str) -> None:
    jpeg = encode(Image.fromarray(photo(256, 256)), "JPEG")
    png = encode(Image.fromarray(photo(256, 256)), "PNG")
    for bad in (b"", b"not an image at all", jpeg[: len(jpeg) // 2], png[: len(png) // 2]):
        with pytest.raises(ValueError, match="cannot decode"):
            decode_image(bad, ext, 3)


def test_decode_bad_channels() -> None:
    with pytest.raises(ValueError, match="channels"):
        decode_image(b"x", "jpg", 2)


def test_dct_downscaled_decode_keeps_min_side() -> None:
    big = Image.fromarray(photo(96, 128)).resize((1024, 768))
    data = encode(big, "JPEG")
    assert decode_image(data, "jpg", 3).shape == (768, 1024, 3)
    for min_side in (50, 96, 97, 100, 192, 193, 384, 385, 700):
        arr = decode_image(data, "jpg", 3, min_side=min_side)
        assert min(arr.shape[:2]) >= min_side
        assert min(arr.shape[:2]) < 2 * min_side or arr.shape[:2] == (768, 1024)
    assert decode_image(data, "jpg", 3, min_side=384).shape == (384, 512, 3)
    assert decode_image(data, "jpg", 1, min_side=192).shape == (192, 256, 1)
    assert decode_image(data, "jpg", 3, min_side=5000).shape == (768, 1024, 3)
    # Pillow formats shrink by the same power-of-two rule
    mid = Image.fromarray(photo(384, 512))
    assert decode_image(encode(mid, "PNG"), "png", 3, min_side=96).shape == (96, 128, 3)
    cmyk = encode(mid.convert("CMYK"), "JPEG")
    assert decode_image(cmyk, "jpg", 3, min_side=192).shape == (192, 256, 3)


def test_decode_min_side_rule() -> None:
    assert decode_min_side(224, 0.2) == 501  # ceil(224 / sqrt(0.2))
    assert decode_min_side(32, 1.0) == 32
    with pytest.raises(ValueError, match="crop_scale_min"):
        decode_min_side(224, 0.0)


# ------------------------------------------------------------------------- crop / flip


@pytest.mark.parametrize(("h", "w"), [(375, 500), (64, 64), (28, 28), (100, 1000)])
def test_crop_params_within_bounds_and_ranges(h: int, w: int) -> None:
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(2000):
        top, left, ch, cw = random_resized_crop_params(h, w, (0.2, 1.0), rng)
        assert ch > 0 and cw > 0 and 0 <= top <= h - ch and 0 <= left <= w - cw
        tol = 2.0 / min(ch, cw)  # integer rounding of the box sides
        assert 3 / 4 - tol <= cw / ch <= 4 / 3 + tol
        fractions.append(ch * cw / (h * w))
    fractions = np.asarray(fractions)
    if w / h > 4 / 3 / 0.2:  # no box of >= 20% area fits the aspect range: always the fallback
        assert (fractions == 100 * 133 / (h * w)).all()
        return
    # crops keep [0.2, 1] of the area (rounding widens it a little on tiny images)
    assert fractions.min() >= 0.2 * 0.85 and fractions.max() <= 1.0
    if h * w > 10_000:
        assert fractions.min() < 0.22 and fractions.max() > 0.85  # the whole range is used
        # failed large tries are resampled, so the mean sits a little below U(0.2, 1)'s 0.6
        assert 0.35 < fractions.mean() < 0.62


def test_crop_fallback_is_center_crop_clamped_to_ratio() -> None:
    rng = np.random.default_rng(0)
    assert random_resized_crop_params(100, 1000, (1.0, 1.0), rng) == (0, 433, 100, 133)
    assert random_resized_crop_params(1000, 100, (1.0, 1.0), rng) == (433, 0, 133, 100)


@pytest.mark.parametrize("channels", [1, 3])
def test_two_views_shapes_determinism_and_variety(channels: int) -> None:
    img = photo(60, 80)[:, :, :channels]
    cfg = AugmentConfig()
    a1, a2 = two_views(img, 32, cfg, np.random.default_rng(5))
    b1, b2 = two_views(img, 32, cfg, np.random.default_rng(5))
    assert a1.shape == a2.shape == (channels, 32, 32) and a1.dtype == np.uint8
    assert a1.flags.c_contiguous
    assert np.array_equal(a1, b1) and np.array_equal(a2, b2)
    assert not np.array_equal(a1, a2)
    c1, _ = two_views(img, 32, cfg, np.random.default_rng(6))
    assert not np.array_equal(a1, c1)


def test_full_crop_flip_is_the_mirrored_eval_view() -> None:
    img = photo(64, 64)
    full = AugmentConfig(crop_scale_min=1.0, crop_scale_max=1.0, flip_p=0.0)
    flipped = dataclasses.replace(full, flip_p=1.0)
    v, _ = two_views(img, 32, full, np.random.default_rng(0))
    f, _ = two_views(img, 32, flipped, np.random.default_rng(0))
    assert np.array_equal(v, eval_view(img, 32))
    assert np.array_equal(f, v[:, :, ::-1])


def test_flip_probability() -> None:
    img = photo(64, 64)
    cfg = AugmentConfig(crop_scale_min=1.0, crop_scale_max=1.0, flip_p=0.5)
    plain = eval_view(img, 16)
    rng = np.random.default_rng(1)
    flips = [not np.array_equal(two_views(img, 16, cfg, rng)[0], plain) for _ in range(400)]
    assert 0.4 < np.mean(flips) < 0.6


def test_eval_view_center_crops() -> None:
    img = np.zeros((40, 120, 3), np.uint8)
    img[:, 40:80] = 200  # the centre square
    out = eval_view(img, 20)
    assert out.shape == (3, 20, 20)
    assert (out == 200).all()
    sq = photo(32, 32)
    assert np.array_equal(eval_view(sq, 32), sq.transpose(2, 0, 1))
    sq.flags.writeable = False  # e.g. np.asarray(PIL image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert eval_view(sq, 16).shape == (3, 16, 16)
    assert eval_view(sq[:, :, :1], 16).shape == (1, 16, 16)
    with pytest.raises(ValueError, match="HxWxC uint8"):
        eval_view(sq.astype(np.float32), 32)


def test_reference_two_views_is_float_chw() -> None:
    data = encode(Image.fromarray(photo(60, 80)), "JPEG")
    v1, v2 = reference_two_views(data, 24, AugmentConfig(), np.random.default_rng(0))
    assert v1.shape == v2.shape == (3, 24, 24) and v1.dtype == np.float32
    assert not np.array_equal(v1, v2)


def test_cpu_throughput_reports_both_paths_and_restores_threads() -> None:
    torch.set_num_threads(2)  # the autouse fixture restores the original afterwards
    data = [encode(Image.fromarray(photo(40, 50, seed=i)), "JPEG") for i in range(2)]
    out = cpu_throughput(data, size=16, cfg=AugmentConfig(), rounds=1)
    assert out["samples"] == 2
    assert out["ours_samples_per_core_s"] > 0 and out["reference_samples_per_core_s"] > 0
    ratio = out["ours_samples_per_core_s"] / out["reference_samples_per_core_s"]
    assert abs(out["cpu_vs_reference"] - ratio) < 1e-9
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="rounds"):
        cpu_throughput(data, size=16, cfg=AugmentConfig(), rounds=0)


# ------------------------------------------------------------------------- batched part


def batch(n: int = 8, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    """Elementwise |a - b| <= atol (torch.testing.assert_close costs seconds on first import)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a.double() - b.double()).abs().max().item()
    assert diff <= atol, f"max abs difference {diff} > {atol}"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def only(**kw: float) -> AugmentConfig:
    """A config with every batched op off except those given."""
    base = dict(NO_AUG, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    return AugmentConfig(**{**base, **kw})


@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_dtype_range(channels: int) -> None:
    cfg = AugmentConfig(mean=[0.5] * channels, std=[0.25] * channels)
    x = batch(c=channels)
    aug = BatchAugment(cfg, channels)
    raw = aug.augment(x, gen())
    assert raw.dtype == torch.float32 and raw.shape == x.shape
    assert raw.min() >= 0.0 and raw.max() <= 1.0
    out = aug(x, gen())
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert_close(out, (raw - 0.5) / 0.25)


@pytest.mark.parametrize("channels", [1, 3])
def test_all_probabilities_zero_is_identity(channels: int) -> None:
    x = batch(c=channels)
    cfg = AugmentConfig(**NO_AUG, mean=[0.0] * channels, std=[1.0] * channels)
    out = BatchAugment(cfg, channels).augment(x, gen())
    assert torch.equal(out, x.float() / 255.0)


def test_brightness_scales_each_sample_by_its_own_factor() -> None:
    x = torch.full((64, 3, 8, 8), 100, dtype=torch.uint8)
    out = BatchAugment(only(jitter_p=1.0, brightness=0.4), 3).augment(x, gen())
    f = out[:, 0, 0, 0] / (100 / 255)
    assert_close(out, (x.float() / 255 * f.view(-1, 1, 1, 1)))
    assert f.min() >= 0.6 - 1e-6 and f.max() <= 1.4 + 1e-6
    assert len(torch.unique(f)) == 64


def test_contrast_and_saturation_against_naive_formulas() -> None:
    x = batch(4)
    xf = x.float() / 255
    luma = 0.2989 * xf[:, 0] + 0.587 * xf[:, 1] + 0.114 * xf[:, 2]
    aug = BatchAugment(only(jitter_p=1.0, contrast=0.4), 3)
    f = aug.sample_params(4, gen(3))["factors"][:, 1]
    mean = luma.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    expected = (f.view(-1, 1, 1, 1) * xf + (1 - f.view(-1, 1, 1, 1)) * mean).clamp(0, 1)
    assert_close(aug.augment(x, gen(3)), expected)
    aug = BatchAugment(only(jitter_p=1.0, saturation=0.4), 3)
    f = aug.sample_params(4, gen(3))["factors"][:, 2].view(-1, 1, 1, 1)
    expected = (f * xf + (1 - f) * luma.unsqueeze(1)).clamp(0, 1)
    assert_close(aug.augment(x, gen(3)), expected)


def test_hue_matches_colorsys_and_zero_shift_is_identity() -> None:
    x = batch(4, size=6)
    xf = x.float() / 255
    zero = BatchAugment(only(jitter_p=1.0, hue=0.0), 3).augment(x, gen())
    assert_close(zero, xf, atol=1e-5)
    aug = BatchAugment(only(jitter_p=1.0, hue=0.5), 3)
    shift = aug.sample_params(4, gen(1))["factors"][:, 3]
    out = aug.augment(x, gen(1))
    for n in range(4):
        for i, j in [(0, 0), (2, 3), (5, 5)]:
            h, s, v = colorsys.rgb_to_hsv(*xf[n, :, i, j].tolist())
            want = colorsys.hsv_to_rgb((h + shift[n].item()) % 1.0, s, v)
            np.testing.assert_allclose(out[n, :, i, j].numpy(), want, atol=1e-5)


def test_hue_preserves_gray_pixels() -> None:
    x = batch(16)
    x[:, 1] = x[:, 0]
    x[:, 2] = x[:, 0]
    out = BatchAugment(only(jitter_p=1.0, hue=0.5), 3).augment(x, gen())
    assert_close(out, x.float() / 255, atol=1e-6)


def test_jitter_probability_and_random_order() -> None:
    aug = BatchAugment(AugmentConfig(), 3)
    p = aug.sample_params(6000, gen())
    assert 0.77 < p["jitter"].float().mean() < 0.83
    assert 0.18 < p["gray"].float().mean() < 0.22
    assert 0.47 < p["blur"].float().mean() < 0.53
    assert torch.equal(p["order"].sort(1).values, torch.arange(4).expand(6000, 4))
    assert len({tuple(r) for r in p["order"].tolist()}) == 24
    assert p["sigma"].min() >= 0.1 and p["sigma"].max() <= 2.0
    x = batch(200, size=8)
    out = BatchAugment(AugmentConfig(jitter_p=0.5, gray_p=0.0, blur_p=0.0), 3).augment(x, gen())
    changed = (out != x.float() / 255).flatten(1).any(1).float().mean()
    assert 0.35 < changed < 0.65


def test_jitter_follows_each_samples_own_order() -> None:
    # brightness and contrast do not commute; each sample must use its own drawn order
    x = batch(64, size=4)
    aug = BatchAugment(only(jitter_p=1.0, brightness=0.4, contrast=0.4), 3)
    p = aug.sample_params(64, gen(2))
    out = aug.augment(x, gen(2))
    for n in range(64):
        y = x[n : n + 1].float() / 255
        for op in p["order"][n].tolist():
            f = p["factors"][n, op].item()
            if op == 0:
                y = (y * f).clamp(0, 1)
            elif op == 1:
                m = (0.2989 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]).mean()
                y = (f * y + (1 - f) * m).clamp(0, 1)
        assert_close(out[n : n + 1], y)


def test_grayscale_gives_equal_channels() -> None:
    out = BatchAugment(only(gray_p=1.0), 3).augment(batch(), gen())
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_blur_preserves_constant_image_and_reduces_variance() -> None:
    aug = BatchAugment(only(blur_p=1.0, blur_sigma_min=0.8), 3)
    const = torch.full((4, 3, 32, 32), 77, dtype=torch.uint8)
    assert_close(aug.augment(const, gen()), const.float() / 255)
    x = batch(16)
    out = aug.augment(x, gen())
    assert (out.flatten(1).var(1) < (x.float() / 255).flatten(1).var(1)).all()
    assert_close(out.mean(dim=(1, 2, 3)), (x.float() / 255).mean(dim=(1, 2, 3)),
                 atol=5e-3)
    assert blur_kernel_size(224, 224) == 23 and blur_kernel_size(32, 32) == 3


def test_determinism_and_per_sample_params() -> None:
    aug = BatchAugment(AugmentConfig(), 3)
    x = batch(32)
    assert torch.equal(aug(x, gen(7)), aug(x, gen(7)))
    assert not torch.equal(aug(x, gen(7)), aug(x, gen(8)))
    same = x[:1].expand(32, -1, -1, -1).contiguous()
    out = aug.augment(same, gen(7))
    assert len({out[i].sum().item() for i in range(32)}) > 20


def test_single_channel_ops() -> None:
    x = batch(8, c=1)
    no_chroma = only(jitter_p=1.0, saturation=0.4, hue=0.5, gray_p=1.0, mean=[0.0], std=[1.0])
    assert torch.equal(BatchAugment(no_chroma, 1).augment(x, gen()), x.float() / 255)
    bright = only(jitter_p=1.0, brightness=0.4, mean=[0.0], std=[1.0])
    assert not torch.equal(BatchAugment(bright, 1).augment(x, gen()), x.float() / 255)


def test_normalize_and_validation() -> None:
    cfg = AugmentConfig()
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(x, cfg)
    want = (1 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    assert_close(out[0, :, 0, 0], want)
    with pytest.raises(ValueError, match="normalize"):
        normalize(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), cfg)
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(cfg, 3)(torch.zeros(2, 3, 4, 4), gen())
    with pytest.raises(ValueError, match="mean/std"):
        BatchAugment(cfg, 1)
