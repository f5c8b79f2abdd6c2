"""`mocopipe evaluate` against the real local stack: a registered encoder on S3 shards."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from typing import Any

import pytest
import torch

from pipeline.cli import main
from pipeline.config import Config, load_config
from pipeline.eval.evaluate import load_encoder
from pipeline.model import build_encoder
from pipeline.shards.writer import write_shards
from pipeline.tracking import client_for, open_run

pytestmark = pytest.mark.integration

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "configs", "demo.toml")


@pytest.fixture(scope="module")
def labelled(storage: Any) -> str:
    """s3://corpus/evaluate-<uuid>/{train,test}: 512 + 256 labelled Fashion-MNIST samples."""
    prefix = f"s3://corpus/evaluate-{uuid.uuid4().hex[:8]}"
    for split, n in (("train", 512), ("test", 256)):
        write_shards(f"fashion-mnist:{split}", f"{prefix}/{split}", storage=storage,
                     max_samples=n, samples_per_shard=128, workers=2, progress=False)
    return prefix


@pytest.fixture(scope="module")
def registered(stack: Any, labelled: str) -> dict[str, Any]:
    """A training-like run: config params, encoder.safetensors, a registered version + alias."""
    from safetensors.torch import save_file

    name = f"evaltest-{uuid.uuid4().hex[:8]}"
    cfg = load_config(DEMO, [f"train.name={name}", f"mlflow.registered_model={name}-encoder",
                             f"data.eval_train={labelled}/train",
                             f"data.eval_test={labelled}/test", "eval.probe_epochs=5"])
    run = open_run(cfg, run_name=f"{name}-run")
    torch.manual_seed(1234)
    backbone = build_encoder(cfg.model, in_channels=cfg.data.channels)
    client = client_for(stack.mlflow_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "encoder.safetensors")
        save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, path)
        client.log_artifact(run.run_id, path)
    client.set_terminated(run.run_id, "FINISHED")
    model = cfg.mlflow.registered_model
    client.create_registered_model(model)
    mv = client.create_model_version(model, source=f"runs:/{run.run_id}/encoder",
                                     run_id=run.run_id)
    client.set_registered_model_alias(model, "champion", mv.version)
    return {"cfg": cfg, "run": run, "backbone": backbone, "model": model,
            "version": str(mv.version)}


def test_load_encoder_restores_weights_and_config(registered: dict[str, Any]) -> None:
    loaded = load_encoder(f"models:/{registered['model']}@champion")
    assert loaded.run_id == registered["run"].run_id
    assert (loaded.model_name, loaded.model_version) == (registered["model"],
                                                         registered["version"])
    cfg: Config = registered["cfg"]
    assert loaded.cfg.to_dict() == cfg.to_dict()  # rebuilt from the run's params
    for key, value in registered["backbone"].state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[key], value)
    # A bare run id finds the same registered version.
    assert load_encoder(registered["run"].run_id).model_version == registered["version"]


def test_evaluate_cli_prints_logs_and_tags(registered: dict[str, Any], labelled: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    model, version = registered["model"], registered["version"]
    rc = main(["evaluate", f"models:/{model}/{version}", "--data", labelled,
               "--set", "eval.probe_epochs=5", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n_train"], out["n_test"]) == (512, 256)
    assert out["train"] == f"{labelled}/train" and out["test"] == f"{labelled}/test"
    for kind in ("knn_top1", "probe_top1"):
        assert set(out[kind]) == {"model", "random_init", "raw_pixels"}
        # Fashion-MNIST: raw pixels are far above chance (0.1) even with a 512-image bank.
        assert out[kind]["raw_pixels"] > 0.5
        assert all(0.0 <= v <= 1.0 for v in out[kind].values())

    client = client_for(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(out["eval_run"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mocopipe.eval_of_run"] == registered["run"].run_id
    assert run.data.tags["mocopipe.model_version"] == version
    assert run.data.metrics["knn_top1"] == pytest.approx(out["knn_top1"]["model"])
    assert run.data.metrics["raw_pixels_probe_top1"] == pytest.approx(
        out["probe_top1"]["raw_pixels"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/embedding.png" in artifacts
    tags = client.get_model_version(model, version).tags
    assert tags["eval.run_id"] == run.info.run_id
    assert tags["eval.knn_top1"] == f"{out['knn_top1']['model']:.4f}"
    assert tags["eval.random_init.probe_top1"] == f"{out['probe_top1']['random_init']:.4f}"

    # The table form names the three rows.
    assert main(["evaluate", f"models:/{model}/{version}", "--data", labelled, "--no-log",
                 "--set", "eval.probe_epochs=1", "--set", "eval.max_bank=128",
                 "--set", "eval.max_queries=64"]) == 0
    table = capsys.readouterr().out
    assert f"{model} v{version}" in table and "random-init" in table and "raw pixels" in table


def test_evaluate_cli_unknown_model_is_one_clear_line(stack: Any,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "models:/no-such-model-xyz/1", "--no-log"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mocopipe: error: models:/no-such-model-xyz/1")
