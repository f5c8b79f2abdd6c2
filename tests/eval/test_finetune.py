"""Fine-tuning with few labels: balanced seeded subsets, the fine-tune learns, plot written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import AugmentConfig
from pipeline.eval.finetune import (EfficiencyRow, FinetuneSettings, balanced_subset,
                                    finetune_top1, label_efficiency, label_efficiency_plot,
                                    rows_as_dicts)
from pipeline.model import small_cnn
from pipeline.shards.fmnist import load_fashion_mnist

pytestmark = pytest.mark.unit

AUG = AugmentConfig(mean=[0.286], std=[0.353])


def test_balanced_subset_takes_the_same_share_of_every_class_seeded() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 10, 1])
    idx = balanced_subset(labels, 0.1, seed=3)
    assert np.bincount(labels[idx]).tolist() == [10, 5, 1, 1]  # at least one per class
    assert np.array_equal(idx, balanced_subset(labels, 0.1, seed=3))
    assert not np.array_equal(idx, balanced_subset(labels, 0.1, seed=4))
    assert np.array_equal(balanced_subset(labels, 1.0, seed=0), np.arange(labels.size))
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(labels, 0.0, seed=0)


def _fmnist(n_train: int, n_test: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    x, y = load_fashion_mnist("train")
    xt, yt = load_fashion_mnist("test")
    return ((torch.from_numpy(x[:n_train, None].copy()), torch.from_numpy(y[:n_train])),
            (torch.from_numpy(xt[:n_test, None].copy()), torch.from_numpy(yt[:n_test])))


@pytest.fixture
def one_thread():
    """Single-threaded torch: on a shared 2-core machine this is the cheapest in CPU time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_finetune_learns_and_leaves_the_encoder_untouched(one_thread: None) -> None:
    torch.manual_seed(0)
    train, test = _fmnist(1000, 500)
    enc = small_cnn(in_channels=1, width=8)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    acc = finetune_top1(enc, train, test, augment_cfg=AUG, num_classes=10,
                        settings=FinetuneSettings(epochs=1, min_steps=80, lr=0.1))
    assert acc > 0.5  # chance is 0.1; measured 0.626 (random-init encoder, 80 steps of 64)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_label_efficiency_rows_and_plot(tmp_path, one_thread: None) -> None:
    torch.manual_seed(0)
    train, test = _fmnist(500, 200)
    a, b = small_cnn(in_channels=1, width=4), small_cnn(in_channels=1, width=4)
    rows = label_efficiency(a, b, train, test, fractions=[0.1, 1.0], augment_cfg=AUG,
                            num_classes=10, settings=FinetuneSettings(epochs=1, min_steps=5))
    assert [r.fraction for r in rows] == [0.1, 1.0]
    per_class = np.bincount(train[1].numpy())
    assert [r.n_labels for r in rows] == [sum(max(1, round(0.1 * c)) for c in per_class), 500]
    assert all(0.0 <= r.pretrained_top1 <= 1.0 and 0.0 <= r.random_top1 <= 1.0 for r in rows)
    assert rows_as_dicts(rows)[0].keys() == {"fraction", "n_labels", "pretrained_top1",
                                             "random_top1"}
    path = label_efficiency_plot(rows + [EfficiencyRow(0.01, 5, 0.5, 0.4)],
                                 tmp_path / "plots" / "label_efficiency.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_parse_fractions_names_the_flag() -> None:
    from pipeline.config import ConfigError
    from pipeline.eval.finetune import parse_fractions

    assert parse_fractions("0.01,0.1,1.0") == [0.01, 0.1, 1.0]
    for bad in ("", "0,0.5", "0.1,x", "1.5"):
        with pytest.raises(ConfigError, match="^--fractions"):
            parse_fractions(bad)


def test_ray_workers_split_the_finetunes_and_get_the_rows_of_one_process(
        one_thread: None) -> None:
    """`finetune_ray`: the 2 x len(fractions) fine-tunes split round-robin over ranks give,
    merged, exactly the rows `label_efficiency` computes in one process (each fine-tune,
    its head included, is seeded on its own), whatever the number of ranks."""
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.eval.evaluate import random_init_like
    from pipeline.eval.finetune_ray import jobs_of, rows_from, run_jobs

    demo = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "demo.toml"
    cfg = load_config(demo, ["model.width=4"])
    settings = FinetuneSettings(epochs=1, min_steps=8, batch_size=32, seed=cfg.train.seed)
    pretrained = random_init_like(cfg, 11)  # stands in for trained weights
    train, test = _fmnist(300, 200)
    fractions = [0.1, 0.5]
    whole = label_efficiency(pretrained, random_init_like(cfg, settings.seed), train, test,
                             fractions=fractions, augment_cfg=cfg.augment, num_classes=10,
                             settings=settings)
    assert sorted(j for r in range(3) for j in jobs_of(fractions, r, 3)) == \
        sorted(jobs_of(fractions, 0, 1))  # every fine-tune once
    for world in (1, 3):
        parts = [run_jobs(cfg, pretrained.state_dict(), train, test, fractions=fractions,
                          num_classes=10, settings=settings, rank=r, world=world)
                 for r in range(world)]
        assert rows_from(parts, fractions) == whole
    with pytest.raises(RuntimeError, match="no result for"):
        rows_from(parts[:1], fractions)
