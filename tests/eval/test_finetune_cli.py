"""`mocopipe finetune` against the real local stack: a registered encoder on S3 shards."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from typing import Any

import pytest
import torch

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.model import build_encoder
from pipeline.shards.writer import write_shards
from pipeline.tracking import client_for, open_run

pytestmark = pytest.mark.integration

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "configs", "demo.toml")


@pytest.fixture(scope="module")
def labelled(storage: Any) -> str:
    """s3://corpus/finetune-<uuid>/{train,test}: 300 + 200 labelled Fashion-MNIST samples."""
    prefix = f"s3://corpus/finetune-{uuid.uuid4().hex[:8]}"
    for split, n in (("train", 300), ("test", 200)):
        write_shards(f"fashion-mnist:{split}", f"{prefix}/{split}", storage=storage,
                     max_samples=n, samples_per_shard=100, workers=2, progress=False)
    return prefix


def _run_with_encoder(stack: Any, name: str, safetensors: bool) -> tuple[str, str | None]:
    """A training-like run (config params); with encoder.safetensors and a registered version
    when `safetensors`, else nothing but the params."""
    from safetensors.torch import save_file

    cfg = load_config(DEMO, [f"train.name={name}", f"mlflow.registered_model={name}-encoder",
                             "model.width=4"])
    run = open_run(cfg, run_name=f"{name}-run")
    client = client_for(stack.mlflow_uri)
    if safetensors:
        torch.manual_seed(7)
        backbone = build_encoder(cfg.model, in_channels=cfg.data.channels)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "encoder.safetensors")
            save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, path)
            client.log_artifact(run.run_id, path)
    client.set_terminated(run.run_id, "FINISHED")
    if not safetensors:
        return run.run_id, None
    model = cfg.mlflow.registered_model
    client.create_registered_model(model)
    mv = client.create_model_version(model, source=f"runs:/{run.run_id}/encoder",
                                     run_id=run.run_id)
    return model, str(mv.version)


def test_finetune_cli_reports_logs_plot_and_tags(stack: Any, labelled: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model, version = _run_with_encoder(stack, f"fttest-{uuid.uuid4().hex[:8]}", True)
    capsys.readouterr()  # MLflow's "View run" lines from the setup above
    rc = main(["finetune", f"models:/{model}/{version}", "--data", labelled,
               "--fractions", "0.1,1.0", "--epochs", "1", "--min-steps", "5", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["fraction"] for r in out["rows"]] == [0.1, 1.0]
    n_small, n_all = (r["n_labels"] for r in out["rows"])
    assert 25 <= n_small <= 35 and n_all == 300  # ~10% of each of the 10 classes; all
    client = client_for(stack.mlflow_uri)
    run = client.get_run(out["finetune_run"])
    assert run.info.status == "FINISHED" and run.data.tags["mocopipe.kind"] == "finetune"
    assert run.data.metrics["finetune.pretrained_top1.0.1"] == pytest.approx(
        out["rows"][0]["pretrained_top1"])
    assert "plots/label_efficiency.png" in {a.path for a in
                                            client.list_artifacts(run.info.run_id, "plots")}
    tags = client.get_model_version(model, version).tags
    assert tags["finetune.run_id"] == run.info.run_id
    assert tags["finetune.random_top1.1"] == f"{out['rows'][1]['random_top1']:.4f}"


def test_finetune_cli_refuses_a_run_without_safetensors(stack: Any, labelled: str,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    run_id, _ = _run_with_encoder(stack, f"ftnone-{uuid.uuid4().hex[:8]}", False)
    capsys.readouterr()
    assert main(["finetune", run_id, "--data", labelled, "--no-log"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mocopipe: error: ") and "encoder.safetensors" in err
