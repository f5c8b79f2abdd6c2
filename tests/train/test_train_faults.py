"""Fault tolerance on the real stack: a killed worker, a killed driver. Both runs must end
with one MLflow run, every logged step exactly once, and (fixed seed, CPU, deterministic
ops, restored data cursor and RNG states) the same final weights as the uninterrupted
reference run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from tests.train.fixtures import (REPO, TINY, Dataset, Reference, encoder_weights,
                                  metric_steps, mlflow_client, overrides, run_train, start_train)

pytestmark = pytest.mark.integration

LOGGED = list(range(2, 25, 2))


def _assert_same_weights(client, run_id: str, ref: Reference, tmp: Path) -> None:
    got = encoder_weights(client, run_id, tmp / "got")
    want = encoder_weights(client, ref.summary["run_id"], tmp / "want")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the uninterrupted run"


def _runs_named(client, run_name: str) -> list:
    exp = client.get_experiment_by_name("traintest")  # tiny.toml: train.name
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`mocopipe.run_name` = '{run_name}'")


def test_restarted_driver_continues_from_the_checkpoint(fmnist_tiny: Dataset,
                                                         reference_run: Reference,
                                                         tmp_path: Path) -> None:
    from pipeline.train.checkpoint import CheckpointManager, mlflow_repo

    name = f"drestart-{uuid.uuid4().hex[:8]}"
    client = mlflow_client()
    first = start_train(fmnist_tiny, name)
    try:
        # Watch the run's own output (not MLflow, polled too slowly for a fast machine, where
        # the tiny run ends seconds after its first checkpoint) and kill on the first commit.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.proc.poll() is None:
            if "checkpoint: committed checkpoints/step-" in first.text:
                break
            time.sleep(0.02)
        assert first.proc.poll() is None and "step 24/24" not in first.text, \
            f"the run ended before the fault:\n{first.text[-4000:]}"
        first.proc.send_signal(signal.SIGKILL)  # the driver dies; Ray ends its workers
        first.wait(30)
    finally:
        first.kill()
    runs = _runs_named(client, name)
    assert len(runs) == 1, runs
    run_id = runs[0].info.run_id
    step = CheckpointManager(mlflow_repo(run_id, client.tracking_uri), every_steps=4,
                             keep=2).latest_step()
    assert step is not None and step < 24, f"no checkpoint before the end:\n{first.text}"
    second = run_train(fmnist_tiny, name)
    s = second.summary()
    assert s["run_id"] == run_id and s["steps"] == 24
    assert "(continued)" in second.text
    resumed = [int(line.split()[-1]) for line in second.text.splitlines()
               if "resumed from checkpoint step" in line]
    assert resumed and resumed[0] >= step
    assert metric_steps(client, run_id, "loss") == LOGGED
    assert client.get_run(run_id).info.status == "FINISHED"
    _assert_same_weights(client, run_id, reference_run, tmp_path)


def test_sigterm_on_the_driver_checkpoints_then_the_run_continues(fmnist_tiny: Dataset) -> None:
    """SIGTERM on `mocopipe train`: the workers save a checkpoint (none is due otherwise:
    every_steps=1000), the driver exits 143, and re-running the same name continues from it."""
    from pipeline.train.checkpoint import CheckpointManager, mlflow_repo

    name = f"sigterm-{uuid.uuid4().hex[:8]}"
    client = mlflow_client()
    no_periodic = "checkpoint.every_steps=1000"
    first = start_train(fmnist_tiny, name, no_periodic)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.proc.poll() is None:
            if any("[mocopipe] step " in line for _, line in first.lines):
                break
            time.sleep(0.2)
        assert first.proc.poll() is None, f"the run ended before SIGTERM:\n{first.text[-4000:]}"
        first.proc.send_signal(signal.SIGTERM)
        rc = first.wait(300)
    finally:
        first.kill()
    assert rc == 143, f"expected exit 143 after SIGTERM, got {rc}:\n{first.text[-4000:]}"
    assert "SIGTERM: asking the workers to checkpoint" in first.text
    runs = _runs_named(client, name)
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    step = CheckpointManager(mlflow_repo(run_id, client.tracking_uri), every_steps=1000,
                             keep=2).latest_step()
    assert step is not None and 0 < step < 24, f"no checkpoint saved on SIGTERM (got {step})"

    second = run_train(fmnist_tiny, name, no_periodic)
    s = second.summary()
    assert s["run_id"] == run_id and s["steps"] == 24
    resumed = [int(line.split()[-1]) for line in second.text.splitlines()
               if "resumed from checkpoint step" in line]
    assert resumed == [step]
    assert metric_steps(client, run_id, "loss") == LOGGED


def test_resume_with_other_config_is_refused_before_touching_the_run(
        fmnist_tiny: Dataset, reference_run: Reference) -> None:
    """The reference run's checkpoints record its manifest sha and config hash: `--resume`
    with another optim.lr is refused in one line, and the run is left as it was."""
    name = reference_run.run_name
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", str(TINY), "--resume",
                           name, *overrides(fmnist_tiny, name, "optim.lr=0.1")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mocopipe: error: train.allow_changed_resume: checkpoint step 24")
    assert "optim.lr" in last and "Traceback" not in proc.stderr
    run = mlflow_client().get_run(reference_run.summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["optim.lr"] == "0.06"


def test_resume_of_a_run_whose_driver_still_trains_is_refused(fmnist_tiny: Dataset) -> None:
    """`--resume NAME` while NAME's driver is training (RUNNING, metrics arriving) exits 2
    with one error line and leaves the running run alone."""
    name = f"live-{uuid.uuid4().hex[:8]}"
    long_run = ("train.epochs=40", "checkpoint.every_steps=1000", "eval.every_epochs=0")
    first = start_train(fmnist_tiny, name, *long_run)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and first.proc.poll() is None:
            if any("[mocopipe] step " in line for _, line in first.lines):
                break
            time.sleep(0.2)
        assert first.proc.poll() is None, f"the run ended too early:\n{first.text[-4000:]}"
        twin = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", str(TINY),
                               "--resume", name, *overrides(fmnist_tiny, name, *long_run)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert first.proc.poll() is None, "the first driver ended while the twin was checked"
    finally:
        first.kill()
    assert twin.returncode == 2, twin.stdout + twin.stderr
    last = twin.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mocopipe: error: --resume {name}: run ") and "is RUNNING" in last
    assert "Traceback" not in twin.stderr
