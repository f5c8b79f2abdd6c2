"""Fine-tuning with few labels: the label-efficiency curve of a pretrained encoder.

For each fraction f of the labelled train set (class-balanced, seeded), the WHOLE encoder
plus a fresh linear head is trained with cross-entropy, twice: from the pretrained weights
and from a random init of the same architecture; test top-1 of both is reported. A gap at
small f is what pretraining buys.

    rows = label_efficiency(pretrained, random_init, train, test, fractions=[0.01, 0.1, 1.0],
                            augment_cfg=cfg.augment, num_classes=10)
    label_efficiency_plot(rows, "plots/label_efficiency.png")

The measuring part is pure PyTorch in one process (no Ray, no MLflow): the caller loads the
encoder (weights from encoder.safetensors) and the labelled images; `log_finetune` records
the rows as one MLflow run (used by `mocopipe finetune`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from pipeline.augment import normalize
from pipeline.config import AugmentConfig

if TYPE_CHECKING:
    from pipeline.eval.evaluate import LoadedEncoder


@dataclass
class FinetuneSettings:
    epochs: int = 30  # passes over the labelled subset ...
    min_steps: int = 100  # ... but at least this many optimizer steps (tiny fractions)
    batch_size: int = 64
    lr: float = 0.05  # SGD momentum 0.9, cosine to 0
    weight_decay: float = 5e-4
    seed: int = 0


@dataclass
class EfficiencyRow:
    fraction: float
    n_labels: int
    pretrained_top1: float
    random_top1: float


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced `fraction` of `labels` (N,): from every class,
    max(1, round(fraction * count)) samples drawn by a seeded permutation."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: {fraction} must be in (0, 1]")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        take = max(1, int(round(fraction * idx.size)))
        picked.append(rng.permutation(idx)[:take])
    return np.sort(np.concatenate(picked))


@torch.no_grad()
def top1(model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor,
         augment_cfg: AugmentConfig, batch_size: int = 512) -> float:
    """Top-1 accuracy of a classifier on uint8 images (N, C, H, W) in eval mode."""
    model.eval()
    hits = 0
    for s in range(0, images_u8.shape[0], batch_size):
        logits = model(normalize(images_u8[s:s + batch_size], augment_cfg))  # (B, classes)
        hits += int((logits.argmax(dim=1) == labels[s:s + batch_size]).sum())
    return hits / images_u8.shape[0]


def finetune_top1(backbone: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                  test: tuple[torch.Tensor, torch.Tensor], *, augment_cfg: AugmentConfig,
                  num_classes: int, settings: FinetuneSettings | None = None) -> float:
    """Fine-tune a COPY of `backbone` (all layers) + Linear(feature_dim, num_classes) on
    `train` = (uint8 (N, C, H, W), int64 (N,)); return top-1 on `test`. Training views: the
    image or its horizontal mirror; `backbone` itself is left untouched."""
    s = settings or FinetuneSettings()
    x_tr, y_tr = train
    if x_tr.shape[0] < 1 or x_tr.shape[0] != y_tr.shape[0]:
        raise ValueError(f"finetune: {x_tr.shape[0]} train images but {y_tr.shape[0]} labels")
    feature_dim = int(getattr(backbone, "feature_dim"))
    with torch.random.fork_rng(devices=[]):  # the head's init depends on the seed alone,
        torch.manual_seed(s.seed)  # not on what ran before (Ray workers split the runs)
        head = nn.Linear(feature_dim, num_classes)
    model = nn.Sequential(copy.deepcopy(backbone), head)
    gen = torch.Generator().manual_seed(s.seed)
    steps_per_epoch = math.ceil(x_tr.shape[0] / s.batch_size)
    steps = max(s.min_steps, s.epochs * steps_per_epoch)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=0.9,
                          weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x_tr.shape[0], (min(s.batch_size, x_tr.shape[0]),), generator=gen)
        x = normalize(x_tr[idx], augment_cfg)  # (B, C, H, W) float
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        loss = F.cross_entropy(model(x), y_tr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return top1(model, test[0], test[1], augment_cfg)


def label_efficiency(pretrained: nn.Module, random_init: nn.Module,
                     train: tuple[torch.Tensor, torch.Tensor],
                     test: tuple[torch.Tensor, torch.Tensor], *, fractions: list[float],
                     augment_cfg: AugmentConfig, num_classes: int,
                     settings: FinetuneSettings | None = None) -> list[EfficiencyRow]:
    """One row per fraction: test top-1 after fine-tuning the pretrained encoder and its
    random-init twin on the same class-balanced, seeded subset of `train`."""
    s = settings or FinetuneSettings()
    rows = []
    for f in fractions:
        idx = torch.from_numpy(balanced_subset(train[1].numpy(), f, s.seed))
        sub = (train[0][idx], train[1][idx])
        rows.append(EfficiencyRow(
            f, int(idx.numel()),
            finetune_top1(pretrained, sub, test, augment_cfg=augment_cfg,
                          num_classes=num_classes, settings=s),
            finetune_top1(random_init, sub, test, augment_cfg=augment_cfg,
                          num_classes=num_classes, settings=s)))
    return rows


def rows_as_dicts(rows: list[EfficiencyRow]) -> list[dict[str, float]]:
    return [asdict(r) for r in rows]


def label_efficiency_plot(rows: list[EfficiencyRow], path: str | os.PathLike[str],
                          title: str = "fine-tuning with few labels") -> str:
    """Test top-1 vs labelled fraction (log x), pretrained vs random init; writes a PNG."""
    fig = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [r.fraction * 100 for r in rows]
    ax.plot(xs, [r.pretrained_top1 for r in rows], "o-", label="pretrained")
    ax.plot(xs, [r.random_top1 for r in rows], "s--", label="random init")
    ax.set_xscale("log")
    ax.set_xlabel("labelled train images used (%)")
    ax.set_ylabel("test top-1")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return os.fspath(path)


# ----------------------------------------------------------------------------- MLflow


def parse_fractions(text: str) -> list[float]:
    """"0.01,0.1,1.0" -> [0.01, 0.1, 1.0]; each in (0, 1]."""
    from pipeline.config import ConfigError

    try:
        out = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"--fractions: {text!r} is not a comma-separated list of numbers") \
            from exc
    if not out or not all(0.0 < f <= 1.0 for f in out):
        raise ConfigError(f"--fractions: {text!r} must list numbers in (0, 1]")
    return out


def log_finetune(loaded: LoadedEncoder, rows: list[EfficiencyRow], settings: FinetuneSettings,
                 *, train_uri: str, test_uri: str, tracking_uri: str) -> str:
    """One MLflow run (in the training run's experiment) with params, a metric per fraction
    (finetune.pretrained_top1.<f> / finetune.random_top1.<f>), results.json and
    plots/label_efficiency.png; the model version (if any) gets `finetune.*` tags."""
    from mlflow.entities import Metric, Param

    from pipeline.eval.evaluate import _terminate
    from pipeline.tracking import client_for, redact_map

    client = client_for(tracking_uri)
    tags = {"mocopipe.kind": "finetune", "mocopipe.finetune_of_run": loaded.run_id,
            "mocopipe.finetune_train": train_uri, "mocopipe.finetune_test": test_uri}
    if loaded.model_name:
        tags |= {"mocopipe.model_name": loaded.model_name,
                 "mocopipe.model_version": str(loaded.model_version)}
    run = client.create_run(loaded.experiment_id, tags=redact_map(tags),
                            run_name="finetune-" + loaded.label.replace(" ", "-"))
    run_id = run.info.run_id
    try:
        params = {f"finetune.{k}": v for k, v in asdict(settings).items()}
        params |= {"finetune.fractions": ",".join(str(r.fraction) for r in rows),
                   "model.arch": loaded.cfg.model.arch, "method.name": loaded.cfg.method.name}
        now = int(time.time() * 1000)
        metrics = []
        for r in rows:
            metrics += [Metric(f"finetune.pretrained_top1.{r.fraction:g}", r.pretrained_top1,
                               now, 0),
                        Metric(f"finetune.random_top1.{r.fraction:g}", r.random_top1, now, 0)]
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                         metrics=metrics)
        with tempfile.TemporaryDirectory(prefix="mocopipe-finetune-") as tmp:
            results = os.path.join(tmp, "results.json")
            with open(results, "w") as f:
                json.dump({"model": loaded.label, "source_run": loaded.run_id,
                           "rows": rows_as_dicts(rows)}, f, indent=2)
            client.log_artifact(run_id, results)
            png = label_efficiency_plot(rows, os.path.join(tmp, "label_efficiency.png"),
                                        title=f"fine-tuning {loaded.label}")
            client.log_artifact(run_id, png, artifact_path="plots")
        if loaded.model_name:
            for r in rows:
                for key, value in ((f"finetune.pretrained_top1.{r.fraction:g}",
                                    r.pretrained_top1),
                                   (f"finetune.random_top1.{r.fraction:g}", r.random_top1)):
                    client.set_model_version_tag(loaded.model_name, loaded.model_version, key,
                                                 f"{value:.4f}")
            client.set_model_version_tag(loaded.model_name, loaded.model_version,
                                         "finetune.run_id", run_id)
    except BaseException:
        _terminate(client, run_id, "FAILED")
        raise
    _terminate(client, run_id, "FINISHED")
    return run_id
