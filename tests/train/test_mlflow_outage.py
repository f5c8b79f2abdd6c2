"""The MLflow server goes away for ~20 s mid-run: training keeps stepping, and every logged
step arrives once the server is back (buffered by the metric thread). The test runs its OWN
MLflow server (same S3, own SQLite DB and port) so the shared stack is never touched."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline.stack.procs import LOOPBACK, ProcRef, pick_ports, spawn, stop, tree, wait_until
from tests.train.fixtures import Dataset, metric_steps, start_train

pytestmark = pytest.mark.integration

OUTAGE_S = 20.0
EPOCHS = 40
STEPS = EPOCHS * 12  # 12 steps per epoch: the run must outlast the outage and the restart
# (on an idle 2-core machine 96 steps finished before the 20 s outage even began)


class OwnMlflow:
    """An `mlflow server` this test starts, stops and restarts by PID on one port."""

    def __init__(self, tmp: Path) -> None:
        self.port = pick_ports(1)[0]
        self.uri = f"http://{LOOPBACK}:{self.port}"
        self.log = tmp / "mlflow.log"
        self.cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                    f"sqlite:///{tmp / 'mlflow.db'}", "--serve-artifacts",
                    "--artifacts-destination", f"s3://mlflow/outage-{uuid.uuid4().hex[:8]}",
                    "--host", LOOPBACK, "--port", str(self.port), "--workers", "1",
                    "--allowed-hosts", f"{LOOPBACK}:{self.port},{LOOPBACK}"]
        self.refs: list[ProcRef] = []

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.uri}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start(self) -> None:
        proc = spawn(self.cmd, env=os.environ, log_path=self.log)
        self.refs = [ProcRef.of(proc.pid)]
        wait_until(self.healthy, what=f"own MLflow at {self.uri}", timeout_s=180,
                   log_path=self.log, proc=proc)
        self.refs = tree(self.refs)

    def stop(self) -> None:
        stop(tree(self.refs))


@pytest.fixture
def own_mlflow(stack: Any, tmp_path: Path) -> Any:
    server = OwnMlflow(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_training_survives_an_mlflow_outage(fmnist_tiny: Dataset, own_mlflow: OwnMlflow) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=own_mlflow.uri)
    name = f"outage-{uuid.uuid4().hex[:8]}"
    tp = start_train(fmnist_tiny, name, f"train.epochs={EPOCHS}", "checkpoint.every_steps=1000",
                     "eval.every_epochs=0", f'mlflow.tracking_uri="{own_mlflow.uri}"')
    try:
        deadline = time.monotonic() + 300
        run_id = None
        while time.monotonic() < deadline and tp.proc.poll() is None:  # first metric arrived
            exp = client.get_experiment_by_name("traintest")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
                run_id = runs[0].info.run_id
                break
            time.sleep(0.5)
        assert run_id is not None, f"no metric before the end:\n{tp.text[-4000:]}"
        own_mlflow.stop()
        down_at = time.monotonic()
        time.sleep(OUTAGE_S)
        up_at = time.monotonic()
        own_mlflow.start()
        rc = tp.wait(400)
    finally:
        tp.kill()
    assert rc == 0, tp.text[-6000:]
    progress = [(t, line) for t, line in tp.lines if "[mocopipe] step " in line]
    during = [line for t, line in progress if down_at < t < up_at]
    assert during, "no training step was logged to stdout while MLflow was down"
    assert metric_steps(client, run_id, "loss") == list(range(2, STEPS + 1, 2))
    assert metric_steps(client, run_id, "samples_per_s") == list(range(2, STEPS + 1, 2))
    assert tp.summary()["steps"] == STEPS
