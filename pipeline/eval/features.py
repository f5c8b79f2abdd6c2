"""Labelled eval shards in memory, and frozen-encoder features of them.

The kNN recipe (`pipeline.eval.knn`), the linear probe (`pipeline.eval.probe`), the training
loop's monitor, the nightly scorer and `mocopipe evaluate` all load their images here:

    images, labels = load_labelled(storage, "s3://corpus/fmnist/test", channels=1, image_size=28)
    feats = extract_features(backbone, images, cfg.augment)          # (N, D) float32, CPU

Shards are read with the training path's machinery: the resumable `ReadAheadStream` and THE
tar parser (`pipeline.ingest.source.read_slices`), and images decoded with DCT downscaling
(`decode_image(..., min_side=image_size)`).
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.augment import decode_image, eval_view, normalize
from pipeline.config import AugmentConfig
from pipeline.ingest.source import StreamOptions, StreamStats, read_slices
from pipeline.shards.manifest import read_manifest, shard_uri
from pipeline.shards.plan import ShardSlice
from pipeline.shards.sources import IMAGE_EXTS
from pipeline.storage import Storage

log = logging.getLogger(__name__)

MAX_CLASSES = 100_000  # label bound when a labelled manifest lists no class names
ArrayLike = np.ndarray | torch.Tensor


class LabelError(ValueError):
    """A sample of a labelled eval dataset has a missing, malformed or out-of-range label."""


# ----------------------------------------------------------------------------- data


def _label(raw: bytes | None, shard: str, key: str, classes: int) -> int:
    """The `.cls` member as an int in [0, classes); anything else names the shard."""
    if raw is None:
        raise LabelError(f"{shard}: sample {key!r} has no .cls label in a labelled dataset")
    text = raw[:20].decode("ascii", "replace").strip()
    if not (text.isdigit() and len(text) <= 9):  # also refuses "-3" and "1e9"
        raise LabelError(f"{shard}: sample {key!r} has a bad .cls label {raw[:20]!r}")
    if int(text) >= classes:
        raise LabelError(f"{shard}: sample {key!r} has label {int(text)} outside [0, {classes}) "
                         "of the manifest's classes")
    return int(text)


def load_labelled(storage: Storage, dataset_uri: str, *, channels: int, image_size: int,
                  max_samples: int = 0,
                  read_ahead_bytes: int = 16 * 2**20) -> tuple[np.ndarray, np.ndarray]:
    """Read a labelled shard dataset sequentially into memory, resized for evaluation.

    Shards are read in manifest order, samples in tar order, so the result is deterministic.
    Each image is decoded to `channels` (DCT-downscaled as long as its shorter side stays
    >= `image_size`) and passed through `eval_view` (shorter side resized to `image_size`,
    center crop). Unreadable samples and undecodable images are skipped and counted in a
    warning. Network retries follow the storage config (`storage.max_retries`).

    Returns:
        images: uint8 (N, C, H, W) with C = channels, H = W = image_size.
        labels: int64 (N,), each in [0, number of manifest classes).

    Raises:
        ManifestError: the manifest is missing or invalid.
        LabelError: a sample has no, a malformed or an out-of-range `.cls` (names the shard).
        ValueError: the dataset is not labelled, or no image could be decoded.
    """
    if max_samples < 0:
        raise ValueError(f"max_samples: {max_samples} must be >= 0 (0 = all)")
    manifest = read_manifest(storage, dataset_uri)
    if not manifest.labelled:
        raise ValueError(
            f"{dataset_uri}: the dataset has no labels (manifest labelled=false); evaluation "
            "needs shards written from a labelled source (class folders or fashion-mnist:...)")
    classes = len(manifest.classes) or MAX_CLASSES
    remaining = manifest.total_samples if max_samples == 0 else max_samples
    slices: list[ShardSlice] = []
    for shard in manifest.shards:
        if remaining <= 0:
            break
        slices.append(ShardSlice(shard.key, 0, min(shard.samples, remaining)))
        remaining -= len(slices[-1])
    needed = {(sl.shard, m) for sl in slices for m in range(sl.start, sl.stop)}
    images: list[np.ndarray] = []
    labels: list[int] = []
    corrupt = 0
    opts = StreamOptions(read_ahead_bytes=read_ahead_bytes, max_retries=storage.cfg.max_retries,
                         backoff_s=storage.cfg.retry_backoff_s)
    samples = read_slices(storage, dataset_uri, slices, needed, StreamStats(), opts)
    with contextlib.closing(samples):  # a LabelError still stops the stream's thread
        for raw in samples:
            ext = next((e for e in IMAGE_EXTS if e in raw.files), None) if raw.files else None
            if raw.files is None or ext is None:
                corrupt += 1
                log.warning("%s/%s: skipping sample %d (%s)", dataset_uri, raw.shard, raw.member,
                            raw.reason or f"no image member, has {sorted(raw.files or {})}")
                continue
            label = _label(raw.files.get("cls"), shard_uri(dataset_uri, raw.shard),
                           raw.key, classes)
            try:
                img = decode_image(raw.files[ext], ext, channels, min_side=image_size)
            except ValueError as exc:  # decode_image's "corrupt sample" error
                corrupt += 1
                log.warning("%s/%s: skipping undecodable sample %r (%s)", dataset_uri, raw.shard,
                            raw.key, exc)
                continue
            images.append(eval_view(img, image_size))
            labels.append(label)
    if corrupt:
        log.warning("%s: skipped %d unreadable or undecodable samples", dataset_uri, corrupt)
    if not images:
        raise ValueError(f"{dataset_uri}: no decodable labelled images found")
    return np.stack(images).astype(np.uint8, copy=False), np.asarray(labels, dtype=np.int64)


# ----------------------------------------------------------------------------- features


@torch.no_grad()
def extract_features(backbone: nn.Module, images_uint8: ArrayLike, augment_cfg: AugmentConfig,
                     batch_size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """Run a frozen backbone over uint8 images (N, C, H, W) in eval mode; return float32 (N, D) on CPU.

    The backbone's train/eval mode is restored afterwards, so the training loop may call this.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} must be >= 1")
    images = torch.as_tensor(images_uint8)
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError(f"images_uint8: expected uint8 (N, C, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if images.shape[1] != len(augment_cfg.mean):
        raise ValueError(f"images_uint8: {images.shape[1]} channels but augment.mean has "
                         f"{len(augment_cfg.mean)} entries")
    was_training = backbone.training
    backbone.eval()
    try:
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device)
            feats = backbone(normalize(x, augment_cfg))  # (B, D)
            out.append(feats.float().flatten(1).cpu())
    finally:
        backbone.train(was_training)
    if not out:
        raise ValueError("images_uint8: no images (N = 0)")
    return torch.cat(out)


def pixel_features(images_uint8: ArrayLike, augment_cfg: AugmentConfig,
                   max_side: int = 32) -> torch.Tensor:
    """The raw-pixel baseline: normalized pixels, area-downsampled to <= max_side, flattened (N, C*h*w)."""
    images = torch.as_tensor(images_uint8)
    x = normalize(images, augment_cfg)
    if max(x.shape[-2:]) > max_side:
        x = F.adaptive_avg_pool2d(x, (min(x.shape[-2], max_side), min(x.shape[-1], max_side)))
    return x.flatten(1)


def check_labelled(name: str, feats: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise ValueError unless feats is a non-empty (N, D) matrix and labels (N,) are >= 0."""
    if feats.dim() != 2 or feats.shape[0] == 0:
        raise ValueError(f"{name}_feats: expected a non-empty (N, D) matrix, got {tuple(feats.shape)}")
    if labels.shape != (feats.shape[0],):
        raise ValueError(f"{name}_labels: expected shape ({feats.shape[0]},), got "
                         f"{tuple(labels.shape)}")
    if labels.min() < 0:
        raise ValueError(f"{name}_labels: labels must be >= 0, got {int(labels.min())}")
