"""Nightly against the real stack: champion promotion in the MLflow registry, data selection
after an append, one run per date.

The promotion test registers tiny real models and scores them with the real kNN. The
orchestration test runs `run_nightly` against the real S3 manifests and MLflow server with a
stand-in trainer (it registers a tiny model version instead of running Ray Train) so that the
selection, warm start, tags and promotion logic are checked in seconds; the real training path
is covered by test_nightly_job.py.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.orchestrate import nightly_plan as plan
from pipeline.config import load_config
from pipeline.orchestrate.nightly import SELECTION_ARTIFACT, promote_if_better, run_nightly
from tests.orchestrate.conftest import DEMO, tiny_overrides

pytestmark = pytest.mark.integration


def _client() -> Any:
    from pipeline.tracking import client_for

    return client_for(os.environ["MLFLOW_TRACKING_URI"])


def _register(name: str, module: nn.Module) -> str:
    """Log `module` as a pytorch model in a throwaway run and register it; its version."""
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment(f"{name}-models")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(module, name="encoder", registered_model_name=name,
                                        serialization_format="pickle", pip_requirements=["torch"])
    return str(info.registered_model_version)


class Constant(nn.Module):
    """An encoder that maps every image to the same feature: kNN at chance level."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, ...) -> (N, 4)
        return torch.ones(x.shape[0], 4)


def _knn_score() -> Any:
    """score(model_uri): real kNN top-1 of the registered module on separable toy data."""
    import mlflow.pytorch

    from pipeline.eval.knn import knn_top1

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 20)
    centers = rng.normal(size=(4, 8)) * 5
    x = torch.tensor(centers[labels] + rng.normal(size=(80, 8)), dtype=torch.float32)
    y = torch.tensor(labels)

    def score(uri: str) -> float:
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
        with torch.no_grad():
            feats = model(x)
        return knn_top1(feats[::2], y[::2], feats[1::2], y[1::2], k=5, t=0.1)

    return score


def test_champion_moves_only_when_at_least_as_good(stack) -> None:
    client, name, score = _client(), f"jobs-promo-{uuid.uuid4().hex[:6]}", _knn_score()
    good = _register(name, nn.Flatten())
    first = promote_if_better(client, name, good, "champion", score)
    assert (first.promote, first.reason) == (True, "no-champion") and first.new_score > 0.9
    assert client.get_model_version_by_alias(name, "champion").version == good

    worse = _register(name, Constant())  # forced to be worse
    second = promote_if_better(client, name, worse, "champion", score)
    assert (second.promote, second.reason) == (False, "worse")
    assert second.new_score < second.champion_score
    assert client.get_model_version_by_alias(name, "champion").version == good
    assert client.get_model_version(name, worse).tags[plan.TAG_DECISION] == "kept-champion"

    same = _register(name, nn.Flatten())  # as good as the champion: promoted
    third = promote_if_better(client, name, same, "champion", score)
    assert (third.promote, third.reason) == (True, "equal")
    assert client.get_model_version_by_alias(name, "champion").version == same


def test_nightly_trains_on_new_shards_after_append(stack, storage, jobs_data) -> None:
    from pipeline.shards.manifest import read_manifest
    from pipeline.shards.writer import write_shards

    name = f"jobs-night-{uuid.uuid4().hex[:6]}"
    train_uri = f"{jobs_data.prefix}/{name}"
    write_shards("fashion-mnist:train", train_uri, storage=storage, max_samples=256,
                 samples_per_shard=64, workers=2, progress=False)
    cfg = load_config(DEMO, tiny_overrides(jobs_data, name, train=train_uri, knn=True))
    client, seen, score_of = _client(), [], {}
    night_scores = iter([0.50, 0.40])  # night 2's model is forced to be worse
    quiet = {"log": lambda message: None}

    def stand_in_train(ncfg: Any) -> dict[str, Any]:
        seen.append(ncfg)
        version = _register(f"{name}-encoder", nn.Flatten())
        score_of[version] = next(night_scores)
        exp = client.get_experiment_by_name(ncfg.mlflow.experiment)
        (run,) = client.search_runs([exp.experiment_id],
                                    filter_string=f"attributes.run_name = '{ncfg.ray.run_name}'")
        client.set_tag(run.info.run_id, "mocopipe.registered_version", version)
        return {"model_version": version}

    def score(uri: str) -> float:
        return score_of[uri.rsplit("/", 1)[1]]

    # Night 1: no previous night -> every shard; no champion yet -> promoted.
    first = run_nightly(cfg, "2026-11-01", train=stand_in_train, score=score, **quiet)
    assert first["state"] == "done" and first["decision"] == "promoted"
    old = [s.key for s in read_manifest(storage, train_uri).shards]
    assert seen[0].data.train_shards == old and len(old) == 4
    assert seen[0].train.init_from == "" and seen[0].ray.run_name == "2026-11-01"
    # The same night again: nothing trains; still one run for that date.
    again = run_nightly(cfg, "2026-11-01", train=stand_in_train, score=score, **quiet)
    assert again["state"] == "already-done" and len(seen) == 1

    # New images arrive (an append of identical bytes would be deduplicated, so other ones).
    write_shards("fashion-mnist:test", train_uri, storage=storage, max_samples=128,
                 samples_per_shard=64, workers=2, append=True, progress=False)
    new = [s.key for s in read_manifest(storage, train_uri).shards if s.key not in old]
    assert len(new) == 2

    # Night 2: the appended shards + ceil(0.25 x 4) = 1 replayed older one, warm-started from
    # the champion (night 1's version); its model is worse, so the alias stays.
    second = run_nightly(cfg, "2026-11-02", train=stand_in_train, score=score, **quiet)
    picked = seen[1].data.train_shards
    assert len(picked) == 3 and picked[:2] == new and picked[2] in old  # new first, then replay
    champion = client.get_model_version_by_alias(f"{name}-encoder", "champion").version
    assert champion == first["model_version"]
    assert seen[1].train.init_from == f"models:/{name}-encoder/{champion}"
    assert (second["decision"], second["reason"]) == ("kept-champion", "worse")

    # Night 3: nothing new since night 2 -> skipped, nothing trained.
    third = run_nightly(cfg, "2026-11-03", train=stand_in_train, score=score, **quiet)
    assert third["state"] == "skipped" and len(seen) == 2

    exp = client.get_experiment_by_name(plan.experiment_name(name))
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["2026-11-01", "2026-11-02", "2026-11-03"]
    night2 = next(r for r in runs if r.data.tags[plan.TAG_DATE] == "2026-11-02")
    assert night2.data.tags[plan.TAG_DECISION] == "kept-champion"
    assert night2.data.tags[plan.TAG_NEW] == "2" and night2.data.tags[plan.TAG_REPLAY] == "1"
    import mlflow.artifacts

    stored = json.loads(mlflow.artifacts.load_text(f"runs:/{night2.info.run_id}/{SELECTION_ARTIFACT}"))
    assert stored["new"] == new and stored["init_from"] == seen[1].train.init_from
