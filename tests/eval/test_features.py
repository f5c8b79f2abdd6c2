"""Unit tests of the evaluation pieces: kNN monitor, linear probe, feature extraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import AugmentConfig
from pipeline.eval.features import extract_features, load_labelled, pixel_features
from pipeline.eval.knn import knn_top1
from pipeline.eval.probe import linear_probe
from pipeline.shards.fmnist import load_fashion_mnist
from pipeline.shards.writer import write_shards
from pipeline.storage import Storage

pytestmark = pytest.mark.unit


def _knn_reference(bank: np.ndarray, bank_y: np.ndarray, query: np.ndarray,
                   query_y: np.ndarray, k: int, t: float) -> float:
    """A naive per-query loop: cosine sims, top-k, exp(sim/t) weighted vote."""
    bank_n = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    correct = 0
    for q, y in zip(query, query_y):
        sims = bank_n @ (q / np.linalg.norm(q))
        top = np.argsort(-sims, kind="stable")[: min(k, len(bank))]
        votes: dict[int, float] = {}
        for j in top:
            votes[int(bank_y[j])] = votes.get(int(bank_y[j]), 0.0) + math.exp(sims[j] / t)
        correct += int(max(votes, key=lambda c: votes[c]) == y)
    return correct / len(query)


@pytest.mark.parametrize("m,n,d,k,t,classes", [(50, 20, 8, 5, 0.1, 3), (30, 17, 4, 200, 0.5, 5),
                                               (64, 33, 16, 1, 0.07, 10)])
def test_knn_matches_naive_reference(m: int, n: int, d: int, k: int, t: float, classes: int) -> None:
    rng = np.random.default_rng(m + n)
    bank = rng.normal(size=(m, d)).astype(np.float32)
    query = rng.normal(size=(n, d)).astype(np.float32)
    bank_y = rng.integers(0, classes, size=m)
    query_y = rng.integers(0, classes, size=n)
    got = knn_top1(bank, bank_y, query, query_y, k=k, t=t)
    assert got == pytest.approx(_knn_reference(bank, bank_y, query, query_y, k, t))


def test_knn_chunking_gives_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    bank, query = rng.normal(size=(40, 6)), rng.normal(size=(25, 6))
    bank_y, query_y = rng.integers(0, 4, 40), rng.integers(0, 4, 25)
    whole = knn_top1(bank, bank_y, query, query_y, k=7, t=0.2)
    monkeypatch.setattr("pipeline.eval.knn.KNN_CHUNK_ELEMENTS", 40 * 3)  # 3 queries per chunk
    assert knn_top1(bank, bank_y, query, query_y, k=7, t=0.2) == whole


def test_knn_separates_clusters_and_is_invariant_to_scale() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 16)) * 5
    bank_y, query_y = np.repeat(np.arange(4), 30), np.repeat(np.arange(4), 10)
    bank = centers[bank_y] + rng.normal(size=(120, 16))
    query = centers[query_y] + rng.normal(size=(40, 16))
    assert knn_top1(bank, bank_y, query, query_y, k=20, t=0.1) == 1.0
    # Cosine similarity: scaling each vector changes nothing.
    scaled = query * rng.uniform(0.1, 10, size=(40, 1))
    assert knn_top1(bank, bank_y, scaled, query_y, k=20, t=0.1) == 1.0


@pytest.mark.parametrize("kwargs,match", [({"k": 0}, "k: 0"), ({"t": 0.0}, "t: 0.0")])
def test_knn_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    x, y = np.ones((3, 2)), np.zeros(3, dtype=np.int64)
    with pytest.raises(ValueError, match=match):
        knn_top1(x, y, x, y, **kwargs)


def test_knn_rejects_mismatched_shapes() -> None:
    x, y = np.ones((3, 2)), np.zeros(3, dtype=np.int64)
    with pytest.raises(ValueError, match="query_labels"):
        knn_top1(x, y, x, y[:2])
    with pytest.raises(ValueError, match="dimension 3"):
        knn_top1(x, y, np.ones((3, 3)), y)
    with pytest.raises(ValueError, match="bank_feats"):
        knn_top1(np.ones((0, 2)), np.zeros(0), x, y)


def _clusters(seed: int, n: int, d: int = 12, classes: int = 3, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * 3
    y = rng.integers(0, classes, size=n)
    return (centers[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def test_linear_probe_learns_separable_classes_and_is_deterministic() -> None:
    x_train, y_train = _clusters(0, 300)
    x_test, y_test = _clusters(0, 400)[0][300:], _clusters(0, 400)[1][300:]
    acc = linear_probe(x_train, y_train, x_test, y_test, epochs=20, lr=0.1, wd=1e-4)
    assert acc >= 0.95
    again = linear_probe(x_train, y_train, x_test, y_test, epochs=20, lr=0.1, wd=1e-4)
    assert again == acc


def test_linear_probe_is_near_chance_on_random_labels() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    y = rng.integers(0, 4, size=600)
    acc = linear_probe(x[:400], y[:400], x[400:], y[400:], epochs=10, lr=0.1, wd=0.0)
    assert acc < 0.45  # chance is 0.25; a leak of test labels would show up as ~1.0


def test_linear_probe_standardizes_features() -> None:
    """A feature scaled by 1e4 would blow up plain SGD; standardization makes it irrelevant."""
    x_train, y_train = _clusters(5, 300, d=6)
    x_test, y_test = _clusters(6, 200, d=6)
    base = linear_probe(x_train, y_train, x_test, y_test, epochs=10, lr=0.1, wd=0.0)
    scale = np.array([1e4, 1, 1e-3, 1, 1, 1], dtype=np.float32)
    scaled = linear_probe(x_train * scale, y_train, x_test * scale, y_test,
                          epochs=10, lr=0.1, wd=0.0)
    assert scaled == pytest.approx(base, abs=0.02)


@pytest.mark.parametrize("kwargs,match", [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"),
                                          ({"wd": -0.1}, "wd")])
def test_linear_probe_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    x, y = np.ones((4, 2)), np.array([0, 1, 0, 1])
    args = {"epochs": 1, "lr": 0.1, "wd": 0.0} | kwargs
    with pytest.raises(ValueError, match=match):
        linear_probe(x, y, x, y, **args)


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, H, W) -> (N, 4)
        return self.dropout(self.bn(self.conv(x))).mean(dim=(2, 3))


def test_extract_features_eval_mode_normalized_and_batch_invariant() -> None:
    torch.manual_seed(0)
    net = _TinyNet()
    net.train()
    images = np.random.default_rng(0).integers(0, 256, size=(10, 1, 8, 8), dtype=np.uint8)
    cfg = AugmentConfig(mean=[0.5], std=[0.25])
    feats = extract_features(net, images, cfg, batch_size=3)
    assert feats.shape == (10, 4) and feats.dtype == torch.float32
    assert net.training, "the caller's train mode must be restored"
    net.eval()
    with torch.no_grad():
        expected = net((torch.from_numpy(images).float() / 255 - 0.5) / 0.25)
    torch.testing.assert_close(feats, expected)
    torch.testing.assert_close(extract_features(net, images, cfg, batch_size=256), expected)


def test_extract_features_rejects_bad_images() -> None:
    cfg = AugmentConfig(mean=[0.5], std=[0.25])
    with pytest.raises(ValueError, match="uint8"):
        extract_features(_TinyNet(), np.zeros((2, 1, 8, 8), dtype=np.float32), cfg)
    with pytest.raises(ValueError, match="3 channels"):
        extract_features(_TinyNet(), np.zeros((2, 3, 8, 8), dtype=np.uint8), cfg)


def test_pixel_features_flatten_and_downsample() -> None:
    cfg = AugmentConfig(mean=[0.0], std=[1.0])
    small = np.full((2, 1, 28, 28), 255, dtype=np.uint8)
    assert pixel_features(small, cfg).shape == (2, 784)
    big = np.zeros((2, 1, 64, 64), dtype=np.uint8)
    big[:, :, :, 32:] = 255  # right half white -> right half of the 32x32 pooled image is 1
    feats = pixel_features(big, cfg, max_side=32).reshape(2, 32, 32)
    assert feats.shape == (2, 32, 32)
    assert float(feats[:, :, :16].max()) == 0.0 and float(feats[:, :, 16:].min()) == 1.0


@pytest.fixture(scope="module")
def fmnist_local(tmp_path_factory: pytest.TempPathFactory) -> str:
    """100 Fashion-MNIST test images as a local shard dataset (4 shards of <= 32)."""
    dest = str(tmp_path_factory.mktemp("evalds") / "test")
    write_shards("fashion-mnist:test", dest, storage=Storage(), max_samples=100,
                 samples_per_shard=32, workers=1, progress=False)
    return dest


def test_load_labelled_reads_every_shard_in_order(fmnist_local: str) -> None:
    images, labels = load_labelled(Storage(), fmnist_local, channels=1, image_size=28)
    raw_x, raw_y = load_fashion_mnist("test")
    assert images.shape == (100, 1, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    # Same source order, and the labels stay attached to their images.
    np.testing.assert_array_equal(labels, raw_y[:100])
    np.testing.assert_array_equal(images[:, 0], raw_x[:100])


def test_load_labelled_resizes_converts_and_caps(fmnist_local: str) -> None:
    images, labels = load_labelled(Storage(), fmnist_local, channels=3, image_size=16,
                                   max_samples=40)
    assert images.shape == (40, 3, 16, 16) and labels.shape == (40,)
    np.testing.assert_array_equal(images[:, 0], images[:, 2])  # gray -> RGB replicates


def test_load_labelled_rejects_unlabelled_and_bad_args(tmp_path, fmnist_local: str) -> None:
    dest = str(tmp_path / "unlabelled")
    write_shards("fashion-mnist:test", dest, storage=Storage(), max_samples=8, labels="none",
                 workers=1, progress=False)
    with pytest.raises(ValueError, match="no labels"):
        load_labelled(Storage(), dest, channels=1, image_size=28)
    with pytest.raises(ValueError, match="max_samples"):
        load_labelled(Storage(), fmnist_local, channels=1, image_size=28, max_samples=-1)
