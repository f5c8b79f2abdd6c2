"""A short single-process MoCo v2 run on Fashion-MNIST learns something real.

3072 training images, 120 steps of 128, 28 px, the small CNN (width 16), SplitBatchNorm
(4 simulated devices) with the shuffled key batch, real aug+ (`pipeline.augment.two_views`
+ `BatchAugment`). Checked: the InfoNCE loss ends clearly below the chance level ln(K+1) and
below its value when the queue first holds only real keys (it rises while the random initial
negatives leave the queue), and kNN top-1 (cosine, k=200, t=0.1;
`pipeline.eval.features.knn_top1`) of the trained backbone beats the same architecture with its
random initial weights by a margin measured on this setup (MARGIN). About 45 s of CPU time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.augment import BatchAugment, two_views
from pipeline.config import AugmentConfig, MocoConfig
from pipeline.eval.features import extract_features
from pipeline.eval.knn import knn_top1
from pipeline.model import MoCo, small_cnn
from pipeline.shards.fmnist import load_fashion_mnist

pytestmark = [pytest.mark.unit, pytest.mark.slow]

N_TRAIN, N_QUERY, BATCH, STEPS, WIDTH, LR = 3072, 1000, 128, 120, 16, 0.06
MOCO = MocoConfig(dim=64, queue_size=1024, momentum=0.99, temperature=0.2, bn="split",
                  bn_splits=4)
AUG = AugmentConfig(crop_scale_min=0.3, mean=[0.286], std=[0.353], blur_p=0.2)
MARGIN = 0.05  # measured +0.114 for seed 0 (seeds 1-2 at other settings: +0.045 to +0.06)


def _views(images: np.ndarray, idx: np.ndarray, rng: np.random.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, 1, 28, 28) x2: random resized crop + flip per sample."""
    pairs = [two_views(images[i][:, :, None], 28, AUG, rng) for i in idx]
    return (torch.from_numpy(np.stack([p[0] for p in pairs])),
            torch.from_numpy(np.stack([p[1] for p in pairs])))


def train_and_eval(steps: int = STEPS, width: int = WIDTH, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    x_train, y_train = x_train[:N_TRAIN], y_train[:N_TRAIN]
    x_test, y_test = x_test[:N_QUERY], y_test[:N_QUERY]
    encoder = small_cnn(in_channels=1, width=width)
    random_encoder = small_cnn(in_channels=1, width=width)
    random_encoder.load_state_dict(encoder.state_dict())  # the same initial weights
    moco = MoCo(encoder, MOCO, seed=seed)
    opt = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=LR,
                          momentum=0.9, weight_decay=5e-4)
    batch_aug = BatchAugment(AUG, channels=1)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = rng.choice(N_TRAIN, BATCH, replace=False)
        v1, v2 = _views(x_train, idx, rng)
        loss, _ = moco(batch_aug(v1, gen), batch_aug(v2, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    bank_u8 = torch.from_numpy(x_train[:, None].copy())  # (N_TRAIN, 1, 28, 28) uint8
    query_u8 = torch.from_numpy(x_test[:, None].copy())

    def knn(backbone: torch.nn.Module) -> float:
        bank = extract_features(backbone, bank_u8, AUG)
        query = extract_features(backbone, query_u8, AUG)
        return knn_top1(bank, y_train, query, y_test, k=200, t=0.1)

    full = math.ceil(MOCO.queue_size / BATCH)  # first step whose negatives are all real keys
    return {"loss_queue_full": float(np.mean(losses[full:full + 5])),
            "loss_last": float(np.mean(losses[-10:])),
            "knn_trained": knn(moco.backbone), "knn_random": knn(random_encoder)}


@pytest.fixture
def one_thread():
    """Single-threaded torch: on a shared 2-core machine this is the cheapest in CPU time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_short_fmnist_training_learns(one_thread: None) -> None:
    r = train_and_eval()
    chance = math.log(MOCO.queue_size + 1)  # 6.93 for K = 1024
    # Measured (seed 0): loss 6.68 when the queue first holds only real keys -> 5.62 at the end;
    # kNN top-1 0.539 (random weights) -> 0.653 (trained).
    assert r["loss_last"] < chance - 1.0, r
    assert r["loss_last"] < r["loss_queue_full"] - 0.5, r
    assert r["knn_trained"] > r["knn_random"] + MARGIN, r
