"""The batched, device-side part of MoCo v2 "aug+": colour jitter, grayscale, blur, normalise.

Everything runs as torch ops on the batch's device (GPU when there is one) with per-sample
random parameters drawn from an explicit `torch.Generator`, so a batch's augmentation is a
pure function of (pixels, generator state). Re-exported by `pipeline.augment`.

Order and semantics (as torchvision's transforms in the MoCo v2 recipe, on float [0, 1]):

1. Colour jitter with probability ``jitter_p``: brightness, contrast, saturation, hue with
   factors ~ U[max(0, 1 - s), 1 + s] (hue shift ~ U[-hue, hue]) applied in a random order
   drawn per sample, like torchvision's ``ColorJitter``. Values are clamped to [0, 1] after
   each op; unlike PIL there is no rounding to uint8 between ops.
2. Grayscale with probability ``gray_p`` (ITU-R 601 luma, replicated to 3 channels).
3. Gaussian blur with probability ``blur_p``, sigma ~ U[blur_sigma_min, blur_sigma_max],
   kernel side = 10% of the image side, made odd (at least 3), reflect padding; separable,
   per-sample kernels through a grouped convolution.
4. Normalisation with ``mean`` / ``std``.

With ``channels == 1`` brightness, contrast and blur apply; saturation, hue and grayscale are
no-ops (a single-channel image has no chroma). Samples that do not get an op are left
bit-identical by it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import AugmentConfig

_LUMA = (0.2989, 0.587, 0.114)
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


def normalize(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """(N,C,H,W) uint8 (0..255) or float (0..1) -> float32 (x - mean) / std, on x's device."""
    if x.ndim != 4 or x.shape[1] != len(cfg.mean) or len(cfg.std) != len(cfg.mean):
        raise ValueError(f"normalize: expected (N, {len(cfg.mean)}, H, W) to match augment.mean "
                         f"{cfg.mean} / std {cfg.std}, got shape {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) -> (N,1,H,W)."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped; factor (N,)."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def _mod(v: torch.Tensor, m: float) -> torch.Tensor:
    """v mod m in [0, m) (floor-based: cheaper than torch.remainder on CPU)."""
    return v - m * torch.floor(v / m)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of (n,3,H,W) float [0, 1] by ``shift`` (n,) turns, as torchvision.

    Same result as rgb -> hsv, h = (h + shift) mod 1, hsv -> rgb, but without computing
    saturation: with v = max and v * s = max - min, each output channel is
    ``max - (max - min) * clamp(min(k, 4 - k), 0, 1)``, k = (n + 6h) mod 6, n = 5, 3, 1 for
    r, g, b. Gray pixels (max == min) come back unchanged.
    """
    r, g, b = x.unbind(1)
    maxc = x.amax(1)
    span = maxc - x.amin(1)
    div = torch.where(span > 0, span, torch.ones_like(span))
    # hue in sextants [0, 6): which channel is the max picks the formula
    h6 = torch.where(maxc == r, (g - b) / div,
                     torch.where(maxc == g, 2.0 + (b - r) / div, 4.0 + (r - g) / div))
    h6 = h6 + 6.0 * shift.view(-1, 1, 1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = _mod(h6 + n, 6.0)
        out.append(maxc - span * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(out, 1)


def _adjust(x: torch.Tensor, op: int, factor: torch.Tensor) -> torch.Tensor:
    """One jitter op on (n,C,H,W) float with per-sample factors (n,)."""
    if op == _BRIGHTNESS:
        return _blend(x, torch.zeros_like(x), factor)
    if op == _CONTRAST:
        gray = _luma(x) if x.shape[1] == 3 else x
        return _blend(x, gray.mean(dim=(1, 2, 3), keepdim=True), factor)
    if op == _SATURATION:
        return _blend(x, _luma(x), factor)
    return _shift_hue(x, factor)


def blur_kernel_size(height: int, width: int) -> int:
    """10% of the image side, odd, at least 3 (23 for 224 px, 3 for 32 px)."""
    k = max(3, int(0.1 * min(height, width)))
    return k if k % 2 else k + 1


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample, reflect padding.

    Args:
        x: (N,C,H,W) float. sigma: (N,) float > 0. Returns (N,C,H,W).
    """
    n, c, h, w = x.shape
    k = blur_kernel_size(h, w)
    pos = torch.arange(k, device=x.device, dtype=x.dtype) - (k // 2)
    kern = torch.exp(-(pos.view(1, -1) ** 2) / (2.0 * sigma.view(-1, 1).to(x.dtype) ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, k)
    pad = k // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode=mode)
    # grouped convs: every (sample, channel) plane gets its own 1-D kernel, rows then columns
    y = F.conv2d(y, kern.view(n * c, 1, k, 1), groups=n * c)
    y = F.conv2d(y, kern.view(n * c, 1, 1, k), groups=n * c)
    return y.view(n, c, h, w)


class BatchAugment:
    """The device-side aug+ on a whole batch: uint8 (N,C,H,W) -> float32 normalised (N,C,H,W)."""

    def __init__(self, cfg: AugmentConfig, channels: int) -> None:
        if channels not in (1, 3):
            raise ValueError(f"BatchAugment: channels must be 1 or 3, got {channels}")
        if len(cfg.mean) != channels or len(cfg.std) != channels:
            raise ValueError(f"BatchAugment: augment.mean/std need {channels} entries, "
                             f"got {cfg.mean} / {cfg.std}")
        self.cfg = cfg
        self.channels = channels

    def sample_params(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample parameters, (n,) each ("order" is (n, 4)), on the generator's device.

        Always the same draws (one rand of shape (n, 12)), whatever the probabilities.
        """
        c = self.cfg
        u = torch.rand(n, 12, generator=generator, device=generator.device)

        def factor(col: int, s: float) -> torch.Tensor:
            lo = max(0.0, 1.0 - s)
            return lo + (1.0 + s - lo) * u[:, col]

        return {
            "jitter": u[:, 0] < c.jitter_p,
            "factors": torch.stack((factor(1, c.brightness), factor(2, c.contrast),
                                    factor(3, c.saturation), c.hue * (2.0 * u[:, 4] - 1.0)), 1),
            "order": u[:, 7:11].argsort(dim=1),
            "gray": u[:, 5] < c.gray_p,
            "blur": u[:, 6] < c.blur_p,
            "sigma": c.blur_sigma_min + (c.blur_sigma_max - c.blur_sigma_min) * u[:, 11],
        }

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Jitter, grayscale and blur without normalisation: uint8 (N,C,H,W) -> float [0, 1]."""
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"BatchAugment: expected uint8 (N, {self.channels}, H, W), "
                             f"got {x.dtype} {tuple(x.shape)}")
        p = {k: v.to(x.device) for k, v in self.sample_params(x.shape[0], generator).items()}
        x = x.float().div_(255.0)
        ops = (_BRIGHTNESS, _CONTRAST) if self.channels == 1 else range(4)
        # Per-sample random order: at position `pos`, each jittered sample gets op order[:, pos].
        # Each op runs only on the samples that draw it (so the others stay bit-identical); the
        # nonzero() calls are small host syncs on a GPU (at most 17 per batch).
        for pos in range(4):
            for op in ops:
                idx = (p["jitter"] & (p["order"][:, pos] == op)).nonzero().squeeze(1)
                if idx.numel():
                    x[idx] = _adjust(x[idx], op, p["factors"][idx, op])
        if self.channels == 3:
            x = torch.where(p["gray"].view(-1, 1, 1, 1), _luma(x).expand_as(x), x)
        idx = p["blur"].nonzero().squeeze(1)
        if idx.numel():
            x[idx] = gaussian_blur(x[idx], p["sigma"][idx])
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 (N,C,H,W) -> float32 (N,C,H,W), augmented and normalised."""
        return normalize(self.augment(x, generator), self.cfg)
