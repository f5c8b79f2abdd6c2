"""`mocopipe finetune` against the real local stack: a registered encoder on S3 shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
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


def test_finetune_cli_on_ray_workers_reports_logs_plot_and_tags(
        stack: Any, labelled: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`mocopipe finetune` on 2 Ray Train workers of the stack (a child process, as a user
    runs it: this one imported Ray before the stack's token existed) logs the run, the plot
    and the tags, and its rows equal the same fine-tunes run in one process (`--local`)."""
    model, version = _run_with_encoder(stack, f"fttest-{uuid.uuid4().hex[:8]}", True)
    common = [f"models:/{model}/{version}", "--data", labelled, "--fractions", "0.1,1.0",
              "--epochs", "1", "--min-steps", "5", "--seed", "3", "--json"]
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "finetune", *common,
                           "--workers", "2", "--cpus-per-worker", "0.5"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])
    assert [r["fraction"] for r in out["rows"]] == [0.1, 1.0]
    n_small, n_all = (r["n_labels"] for r in out["rows"])
    assert 25 <= n_small <= 35 and n_all == 300  # ~10% of each of the 10 classes; all
    for rank in (0, 1):  # both Ray Train workers ran their share (2 of the 4 fine-tunes)
        assert f"finetune: rank {rank}/2 runs 2 fine-tunes" in proc.stdout + proc.stderr
    client = client_for(stack.mlflow_uri)
    run = client.get_run(out["finetune_run"])
    assert run.info.status == "FINISHED" and run.data.tags["mocopipe.kind"] == "finetune"
    assert run.data.params["finetune.seed"] == "3"  # --seed, not the training run's seed
    assert run.data.metrics["finetune.pretrained_top1.0.1"] == pytest.approx(
        out["rows"][0]["pretrained_top1"])
    assert "plots/label_efficiency.png" in {a.path for a in
                                            client.list_artifacts(run.info.run_id, "plots")}
    tags = client.get_model_version(model, version).tags
    assert tags["finetune.run_id"] == run.info.run_id
    assert tags["finetune.random_top1.1"] == f"{out['rows'][1]['random_top1']:.4f}"

    capsys.readouterr()  # MLflow's "View run" lines from the setup above
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker (0.5 CPU -> 1 torch thread)
    try:
        assert main(["finetune", *common, "--local", "--no-log"]) == 0
    finally:
        torch.set_num_threads(threads)
    local = json.loads(capsys.readouterr().out)
    assert local["rows"] == out["rows"]


def test_finetune_cli_refuses_a_run_without_safetensors(stack: Any, labelled: str,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    run_id, _ = _run_with_encoder(stack, f"ftnone-{uuid.uuid4().hex[:8]}", False)
    capsys.readouterr()
    assert main(["finetune", run_id, "--data", labelled, "--no-log"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mocopipe: error: ") and "encoder.safetensors" in err
