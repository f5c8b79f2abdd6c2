"""End to end on the real stack: 2 Ray Train workers, one MLflow run with params, tags,
metrics at the expected steps, pruned checkpoints, exported encoder, registered model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.train.fixtures import Dataset, Reference, encoder_weights, metric_steps, mlflow_client

pytestmark = pytest.mark.integration

STEPS = 24  # 2 epochs x 12 steps (384 samples, 2 workers x 16)
LOGGED = list(range(2, STEPS + 1, 2))  # train.log_every = 2


def _all_artifacts(client: Any, run_id: str, path: str | None = None) -> list[str]:
    out: list[str] = []
    for info in client.list_artifacts(run_id, path):
        out += _all_artifacts(client, run_id, info.path) if info.is_dir else [info.path]
    return out


def test_end_to_end_run_is_complete_in_mlflow(reference_run: Reference, fmnist_tiny: Dataset,
                                              tmp_path: Path) -> None:
    s = reference_run.summary
    assert s["steps"] == STEPS and s["total_steps"] == STEPS and s["stopped"] is False
    assert 0.0 <= s["knn_top1"] <= 1.0 and s["loss"] > 0
    assert s["registered_model"] == f"{reference_run.run_name}-encoder"
    assert s["model_version"] == "1"
    assert s["mlflow_url"].endswith(f"/runs/{s['run_id']}")
    assert s["first_step_s"] > 0  # from the workers, through Ray Train's Result
    assert s["first_step_total_s"] > s["first_step_s"]  # ... and from run_training's call
    client = mlflow_client()
    run = client.get_run(s["run_id"])
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["train.per_worker_batch"] == "16" and params["ray.num_workers"] == "2"
    assert params["data.train"] == fmnist_tiny.train and params["augment.mean"] == "[0.286]"
    assert tags["mocopipe.dataset"] == fmnist_tiny.train
    assert tags["mocopipe.manifest_sha"] == fmnist_tiny.manifest_sha
    assert tags["mocopipe.git_sha"] and tags["mocopipe.run_name"] == reference_run.run_name
    assert tags["mocopipe.method"] == "moco_v2"
    # lineage: the run page's "Datasets" panel shows the manifest it trained on
    (ds,) = [i.dataset for i in run.inputs.dataset_inputs]
    assert ds.digest == fmnist_tiny.manifest_sha[:16] and fmnist_tiny.train in ds.source

    # Metrics at exactly the expected steps, each once; kNN at each epoch end.
    for key in ("loss", "acc1", "lr", "momentum", "samples_per_s", "step_time",
                "data_wait_frac", "queue_fill", "corrupt", "epoch"):
        assert metric_steps(client, s["run_id"], key) == LOGGED, key
    assert metric_steps(client, s["run_id"], "knn_top1") == [12, 24]
    for key in ("driver_s", "ray_init_s", "worker_group_s", "process_group_s", "readers_s",
                "manifest_s", "setup_s", "resume_s", "first_batch_s", "first_step_s",
                "total_s"):  # the startup breakdown, once
        assert metric_steps(client, s["run_id"], f"startup/{key}") == [0], key
    assert "[mocopipe] startup driver_s" in reference_run.output
    lr = {m.step: m.value for m in client.get_metric_history(s["run_id"], "lr")}
    assert lr[24] < lr[12]  # cosine decay

    # Checkpoints: every 4 steps, the last 2 kept (older ones deleted through the MLflow
    # artifact proxy; SeaweedFS may still list their empty prefixes), each complete.
    files = {i.path: {os.path.basename(f.path) for f in client.list_artifacts(s["run_id"], i.path)}
             for i in client.list_artifacts(s["run_id"], "checkpoints")}
    assert {p for p, names in files.items() if names} == {
        "checkpoints/step-0000020", "checkpoints/step-0000024"}
    assert files["checkpoints/step-0000020"] == {"state.pt", "ranks.pt", "COMPLETE"}
    assert files["checkpoints/step-0000024"] == {"state.pt", "ranks.pt", "COMPLETE"}

    # Exported encoder: backbone keys only, and the registered version carries the kNN.
    weights = encoder_weights(client, s["run_id"], tmp_path)
    assert weights and not any(k.startswith(("head", "encoder_k", "queue")) for k in weights)
    version = client.get_model_version(s["registered_model"], s["model_version"])
    assert float(version.tags["knn_top1"]) == pytest.approx(s["knn_top1"], abs=1e-4)
    assert version.run_id == s["run_id"]
    artifacts = _all_artifacts(client, s["run_id"])
    for plot in ("plots/view_pairs.png", "plots/curves.png", "plots/embedding.png"):
        assert plot in artifacts, f"{plot} missing from {artifacts}"

    # No secret in params, tags or any artifact.
    secrets = [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]]
    for value in [*params.values(), *tags.values(), *version.tags.values()]:
        assert not any(sec in value for sec in secrets)
    for path in _all_artifacts(client, s["run_id"]):
        local = client.download_artifacts(s["run_id"], path, str(tmp_path / "all"))
        data = Path(local).read_bytes()
        assert not any(sec.encode() in data for sec in secrets), path
    assert not any(sec in reference_run.output for sec in secrets)
