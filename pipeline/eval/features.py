"""Evaluate frozen encoders: labelled-shard loading, feature extraction, kNN monitor, linear probe.

The pieces are small and pure so the training loop (kNN monitor every epoch) and
`mocopipe evaluate` (kNN + linear probe against random-init and raw-pixel baselines) share
them:

    images, labels = load_labelled(storage, "s3://corpus/fmnist/test", channels=1, image_size=28)
    feats = extract_features(backbone, images, cfg.augment)          # (N, D) float32, CPU
    acc = knn_top1(bank_feats, bank_labels, feats, labels, k=200, t=0.1)
    acc = linear_probe(bank_feats, bank_labels, feats, labels, epochs=100, lr=0.1, wd=0.0)

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from webdataset.tariterators import tar_file_iterator

from pipeline.augment import decode_image, eval_view, normalize
from pipeline.config import AugmentConfig
from pipeline.shards.manifest import read_manifest, shard_uri
from pipeline.storage import Storage, join

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Cosine-similarity entries per kNN chunk (queries x bank): bounds memory to ~64 MB of float32.
KNN_CHUNK_ELEMENTS = 16 * 2**20

ArrayLike = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------- data


def load_labelled(storage: Storage, dataset_uri: str, *, channels: int, image_size: int,
                  max_samples: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Read a labelled shard dataset sequentially into memory, resized for evaluation.

    Shards are read in manifest order, samples in tar order, so the result is deterministic.
    Each image is decoded to `channels` and passed through `eval_view` (shorter side resized
    to `image_size`, center crop). Undecodable images are skipped and counted in a warning.

    Returns:
        images: uint8 (N, C, H, W) with C = channels, H = W = image_size.
        labels: int64 (N,).

    Raises:
        ManifestError: the manifest is missing or invalid.
        ValueError: the dataset is not labelled, a sample has no or a bad `.cls`, or no
            image could be decoded.
    """
    if max_samples < 0:
        raise ValueError(f"max_samples: {max_samples} must be >= 0 (0 = all)")
    manifest = read_manifest(storage, dataset_uri)
    if not manifest.labelled:
        raise ValueError(
            f"{dataset_uri}: the dataset has no labels (manifest labelled=false); evaluation "
            "needs shards written from a labelled source (class folders or fashion-mnist:...)")
    want = manifest.total_samples if max_samples == 0 else min(max_samples, manifest.total_samples)
    images: list[np.ndarray] = []
    labels: list[int] = []
    corrupt = 0
    for shard in manifest.shards:
        if len(images) >= want:
            break
        uri = shard_uri(dataset_uri, shard.key)
        for key, sample in _iter_tar_samples(storage, uri):
            if len(images) >= want:
                break
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            if ext is None:
                continue  # a stray member (e.g. metadata) without an image
            if "cls" not in sample:
                raise ValueError(f"{uri}: sample {key!r} has no .cls label in a labelled dataset")
            try:
                label = int(sample["cls"].decode("ascii").strip())
            except (UnicodeDecodeError, ValueError) as exc:
                raise ValueError(f"{uri}: sample {key!r} has a bad .cls label "
                                 f"{sample['cls'][:20]!r}") from exc
            try:
                img = decode_image(sample[ext], ext, channels)
            except ValueError as exc:  # decode_image's "corrupt sample" error
                corrupt += 1
                log.warning("%s: skipping undecodable sample %r (%s)", uri, key, exc)
                continue
            images.append(eval_view(img, image_size))
            labels.append(label)
    if corrupt:
        log.warning("%s: skipped %d undecodable images", dataset_uri, corrupt)
    if not images:
        raise ValueError(f"{dataset_uri}: no decodable labelled images found")
    return np.stack(images).astype(np.uint8, copy=False), np.asarray(labels, dtype=np.int64)


def _iter_tar_samples(storage: Storage, uri: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream one tar and yield (key, {ext: bytes}) with the members of one sample grouped."""
    body, _size = storage.get_stream(uri)
    try:
        key: str | None = None
        sample: dict[str, bytes] = {}
        for member in tar_file_iterator(body):
            name = member["fname"].rsplit("/", 1)[-1]
            base, _, ext = name.partition(".")
            if base != key:
                if key is not None and sample:
                    yield key, sample
                key, sample = base, {}
            sample[ext.lower()] = member["data"]
        if key is not None and sample:
            yield key, sample
    finally:
        body.close()


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


# ----------------------------------------------------------------------------- kNN


def _check_pair(name: str, feats: torch.Tensor, labels: torch.Tensor) -> None:
    if feats.dim() != 2 or feats.shape[0] == 0:
        raise ValueError(f"{name}_feats: expected a non-empty (N, D) matrix, got {tuple(feats.shape)}")
    if labels.shape != (feats.shape[0],):
        raise ValueError(f"{name}_labels: expected shape ({feats.shape[0]},), got "
                         f"{tuple(labels.shape)}")
    if labels.min() < 0:
        raise ValueError(f"{name}_labels: labels must be >= 0, got {int(labels.min())}")


@torch.no_grad()
def knn_top1(bank_feats: ArrayLike, bank_labels: ArrayLike, query_feats: ArrayLike,
             query_labels: ArrayLike, *, k: int = 200, t: float = 0.1) -> float:
    """Weighted kNN top-1 accuracy (the InstDisc / MoCo monitor) with cosine similarity.

    Each query takes its `k` most similar bank samples; neighbour j votes for its label with
    weight exp(sim_j / t). Queries are processed in chunks so memory stays bounded.
    bank_feats (M, D), bank_labels (M,), query_feats (N, D), query_labels (N,).
    """
    if k < 1:
        raise ValueError(f"k: {k} must be >= 1")
    if not t > 0:
        raise ValueError(f"t: {t} must be > 0")
    bank = torch.as_tensor(bank_feats).float()
    bank_y = torch.as_tensor(bank_labels).long()
    query = torch.as_tensor(query_feats).float()
    query_y = torch.as_tensor(query_labels).long()
    _check_pair("bank", bank, bank_y)
    _check_pair("query", query, query_y)
    if bank.shape[1] != query.shape[1]:
        raise ValueError(f"query_feats: dimension {query.shape[1]} != bank dimension {bank.shape[1]}")
    bank = F.normalize(bank, dim=1)
    query = F.normalize(query, dim=1)
    k = min(k, bank.shape[0])
    classes = int(max(bank_y.max(), query_y.max())) + 1
    chunk = max(1, KNN_CHUNK_ELEMENTS // bank.shape[0])
    correct = 0
    for start in range(0, query.shape[0], chunk):
        q = query[start:start + chunk]
        sim = q @ bank.T                                  # (B, M) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)             # (B, k)
        weights = (top_sim / t).exp()                     # (B, k)
        votes = torch.zeros(q.shape[0], classes)
        votes.scatter_add_(1, bank_y[top_idx], weights)   # (B, classes)
        correct += int((votes.argmax(dim=1) == query_y[start:start + chunk]).sum())
    return correct / query.shape[0]


# ----------------------------------------------------------------------------- linear probe


def linear_probe(train_feats: ArrayLike, train_labels: ArrayLike, test_feats: ArrayLike,
                 test_labels: ArrayLike, *, epochs: int, lr: float, wd: float,
                 batch_size: int = 256, seed: int = 0) -> float:
    """Top-1 test accuracy of a logistic-regression head trained on cached, frozen features.

    Features are standardized with the train set's per-dimension mean/std. The head
    (D -> classes, zero-initialized) is trained with mini-batch SGD (momentum 0.9, cosine
    learning rate, L2 weight decay `wd` on the weights) for `epochs` passes, shuffled by a
    seeded generator: the same inputs give the same accuracy.
    train_feats (M, D), train_labels (M,), test_feats (N, D), test_labels (N,).
    """
    if epochs < 1:
        raise ValueError(f"epochs: {epochs} must be >= 1")
    if not lr > 0:
        raise ValueError(f"lr: {lr} must be > 0")
    if wd < 0:
        raise ValueError(f"wd: {wd} must be >= 0")
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} must be >= 1")
    x_train = torch.as_tensor(train_feats).float()
    y_train = torch.as_tensor(train_labels).long()
    x_test = torch.as_tensor(test_feats).float()
    y_test = torch.as_tensor(test_labels).long()
    _check_pair("train", x_train, y_train)
    _check_pair("test", x_test, y_test)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"test_feats: dimension {x_test.shape[1]} != train dimension "
                         f"{x_train.shape[1]}")
    mean = x_train.mean(dim=0, keepdim=True)
    std = x_train.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std
    classes = int(max(y_train.max(), y_test.max())) + 1

    head = nn.Linear(x_train.shape[1], classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD([{"params": [head.weight], "weight_decay": wd},
                           {"params": [head.bias], "weight_decay": 0.0}], lr=lr, momentum=0.9)
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    step = 0
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                for group in opt.param_groups:  # cosine decay to 0 over all steps
                    group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total))
                loss = F.cross_entropy(head(x_train[idx]), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
    with torch.no_grad():
        pred = head(x_test).argmax(dim=1)
    return int((pred == y_test).sum()) / len(y_test)
