"""`mocopipe evaluate`: score a trained encoder against a random-init floor and a raw-pixel baseline.

    loaded = load_encoder("models:/demo-encoder/1", overrides=[])    # or @alias, runs:/..., a run id
    report = compare(loaded.backbone, loaded.cfg, train_uri=..., test_uri=...)
    eval_run_id = log_report(loaded, report)                          # new MLflow run + version tags

The encoder is rebuilt from its training run by `pipeline.eval.registry` (architecture from
the run's params, weights from its `encoder.safetensors`; a run without that file is refused,
the registry is never unpickled). Scores use THE kNN recipe (`pipeline.eval.knn`) and the
linear probe (`pipeline.eval.probe`) on features of `pipeline.eval.features`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.config import Config, ConfigError
from pipeline.eval.features import extract_features, load_labelled, pixel_features
from pipeline.eval.knn import knn_top1
from pipeline.eval.probe import linear_probe
from pipeline.eval.registry import (
    LoadedEncoder,
    config_from_params,
    load_encoder,
    resolve_source,
)
from pipeline.model import build_encoder
from pipeline.shards.manifest import read_manifest
from pipeline.storage import Storage, join
from pipeline.tracking import client_for, redact_map

# `mocopipe evaluate` loads through these (their home is pipeline.eval.registry)
__all__ = [
    "EvalReport",
    "LoadedEncoder",
    "compare",
    "config_from_params",
    "format_table",
    "load_encoder",
    "log_report",
    "resolve_source",
    "split_data",
]

log = logging.getLogger(__name__)

ROWS = ("model", "random_init", "raw_pixels")


@dataclass
class EvalReport:
    """Top-1 accuracies (fractions) per row of `ROWS`, and what they were measured on."""

    knn: dict[str, float] = field(default_factory=dict)
    probe: dict[str, float] = field(default_factory=dict)
    train_uri: str = ""
    test_uri: str = ""
    n_train: int = 0
    n_test: int = 0
    seconds: float = 0.0
    class_names: list[str] = field(default_factory=list)
    # The model's test features (N, D) and labels (N,), for the embedding picture.
    embedding: tuple[torch.Tensor, Any] | None = field(default=None, repr=False)

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: knn_top1, probe_top1, random_init_knn_top1, raw_pixels_probe_top1, ..."""
        out: dict[str, float] = {}
        for row in ROWS:
            prefix = "" if row == "model" else f"{row}_"
            out[f"{prefix}knn_top1"] = self.knn[row]
            out[f"{prefix}probe_top1"] = self.probe[row]
        return out


# ----------------------------------------------------------------------------- measuring


def random_init_like(cfg: Config, seed: int) -> nn.Module:
    """A freshly initialized encoder of the same architecture (the floor), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_encoder(cfg.model, in_channels=cfg.data.channels)


def compare(backbone: nn.Module, cfg: Config, *, train_uri: str, test_uri: str,
            storage: Storage | None = None, device: str = "cpu") -> EvalReport:
    """kNN (k, t from `[eval]`) and linear probe for the model, a random-init twin and raw pixels.

    Images are loaded once (capped by eval.max_bank / eval.max_queries); each encoder's
    features are computed once and shared by kNN and probe. The probe trains on the train
    set's features and is scored on the test set's.
    """
    t0 = time.monotonic()
    storage = storage or Storage(cfg.storage)
    d, e = cfg.data, cfg.eval
    train_x, train_y = load_labelled(storage, train_uri, channels=d.channels,
                                     image_size=d.image_size, max_samples=e.max_bank)
    test_x, test_y = load_labelled(storage, test_uri, channels=d.channels,
                                   image_size=d.image_size, max_samples=e.max_queries)
    report = EvalReport(train_uri=train_uri, test_uri=test_uri, n_train=len(train_y),
                        n_test=len(test_y), class_names=read_manifest(storage, test_uri).classes)
    encoders = {"model": backbone.to(device),
                "random_init": random_init_like(cfg, cfg.train.seed).to(device)}
    for row in ROWS:
        if row == "raw_pixels":
            f_train, f_test = (pixel_features(train_x, cfg.augment),
                               pixel_features(test_x, cfg.augment))
        else:
            f_train = extract_features(encoders[row], train_x, cfg.augment, device=device)
            f_test = extract_features(encoders[row], test_x, cfg.augment, device=device)
        report.knn[row] = knn_top1(f_train, train_y, f_test, test_y, k=e.knn_k, t=e.knn_t)
        report.probe[row] = linear_probe(f_train, train_y, f_test, test_y, epochs=e.probe_epochs,
                                         lr=e.probe_lr, wd=e.probe_wd, seed=cfg.train.seed)
        log.info("evaluate %s: knn %.4f probe %.4f", row, report.knn[row], report.probe[row])
        if row == "model":
            report.embedding = (f_test, test_y)
    report.seconds = time.monotonic() - t0
    return report


def split_data(data: str | None, train: str | None, test: str | None,
               cfg: Config) -> tuple[str, str]:
    """The train/test datasets: --data D means D/train + D/test; --train-data/--test-data win;
    otherwise data.eval_train / data.eval_test of the config."""
    train = train or (join(data, "train") if data else "") or cfg.data.eval_train
    test = test or (join(data, "test") if data else "") or cfg.data.eval_test
    if not train or not test:
        raise ConfigError("--data: no labelled train/test datasets: pass --data DATASET (with "
                          "DATASET/train and DATASET/test), or --train-data and --test-data, or "
                          "set data.eval_train and data.eval_test")
    return train, test


# ----------------------------------------------------------------------------- reporting


def format_table(report: EvalReport, label: str) -> str:
    """The comparison as a small fixed-width text table (accuracies in percent)."""
    names = {"model": label, "random_init": "random-init (same arch)", "raw_pixels": "raw pixels"}
    width = max(len(n) for n in names.values()) + 2
    lines = [f"{'encoder':<{width}}{'kNN top-1':>11}{'linear probe':>14}"]
    for row in ROWS:
        lines.append(f"{names[row]:<{width}}{100 * report.knn[row]:>10.2f}%"
                     f"{100 * report.probe[row]:>13.2f}%")
    lines.append(f"train {report.train_uri} ({report.n_train}), test {report.test_uri} "
                 f"({report.n_test}), {report.seconds:.0f} s")
    return "\n".join(lines)


def version_tags(report: EvalReport, eval_run_id: str) -> dict[str, str]:
    """Tags set on the evaluated model version: eval.knn_top1, eval.random_init.probe_top1, ..."""
    tags = {"eval.run_id": eval_run_id, "eval.test_data": report.test_uri}
    for row in ROWS:
        prefix = "eval." if row == "model" else f"eval.{row}."
        tags[f"{prefix}knn_top1"] = f"{report.knn[row]:.4f}"
        tags[f"{prefix}probe_top1"] = f"{report.probe[row]:.4f}"
    return tags


def log_report(loaded: LoadedEncoder, report: EvalReport, tracking_uri: str) -> str:
    """Log the comparison to a new run in the training run's experiment; tag the model version.

    The run carries tags `mocopipe.eval_of_run`, `mocopipe.model_name` / `mocopipe.model_version`,
    the accuracies as metrics, the eval settings as params, `results.json` and
    `plots/embedding.png` (the model's test embeddings). Returns the new run's id.
    """
    from mlflow.entities import Metric, Param

    from pipeline.eval.plots import embedding_projection

    client = client_for(tracking_uri)
    tags = {"mocopipe.eval_of_run": loaded.run_id, "mocopipe.kind": "evaluate",
            "mocopipe.eval_train": report.train_uri, "mocopipe.eval_test": report.test_uri}
    if loaded.model_name:
        tags |= {"mocopipe.model_name": loaded.model_name,
                 "mocopipe.model_version": str(loaded.model_version)}
    run_name = "eval-" + loaded.label.replace(" ", "-")
    run = client.create_run(loaded.experiment_id, run_name=run_name, tags=redact_map(tags))
    run_id = run.info.run_id
    try:
        e = loaded.cfg.eval
        params = {"eval.knn_k": e.knn_k, "eval.knn_t": e.knn_t, "eval.probe_epochs": e.probe_epochs,
                  "eval.probe_lr": e.probe_lr, "eval.probe_wd": e.probe_wd,
                  "eval.max_bank": e.max_bank, "eval.max_queries": e.max_queries,
                  "n_train": report.n_train, "n_test": report.n_test,
                  "model.arch": loaded.cfg.model.arch}
        now = int(time.time() * 1000)
        client.log_batch(run_id, params=[Param(k, v) for k, v in redact_map(params).items()],
                         metrics=[Metric(k, v, now, 0) for k, v in report.metrics().items()])
        with tempfile.TemporaryDirectory(prefix="mocopipe-eval-") as tmp:
            results = os.path.join(tmp, "results.json")
            with open(results, "w") as f:
                json.dump({"model": loaded.label, "source_run": loaded.run_id,
                           "knn_top1": report.knn, "probe_top1": report.probe,
                           "train": report.train_uri, "test": report.test_uri,
                           "n_train": report.n_train, "n_test": report.n_test}, f, indent=2)
            client.log_artifact(run_id, results)
            if report.embedding is not None:
                feats, labels = report.embedding
                png = embedding_projection(feats, labels, os.path.join(tmp, "embedding.png"),
                                           report.class_names or None)
                client.log_artifact(run_id, png, artifact_path="plots")
        if loaded.model_name:
            for key, value in version_tags(report, run_id).items():
                client.set_model_version_tag(loaded.model_name, loaded.model_version, key, value)
    except BaseException:
        _terminate(client, run_id, "FAILED")
        raise
    _terminate(client, run_id, "FINISHED")
    return run_id


def _terminate(client: Any, run_id: str, status: str) -> None:
    """End the run; MLflow's "View run at" lines go to stderr so stdout stays ours (--json)."""
    with contextlib.redirect_stdout(sys.stderr):
        client.set_terminated(run_id, status=status)
