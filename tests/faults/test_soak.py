"""Soak: one training run while a fault schedule hits it, compared with an uninterrupted run.

The run (tiny.toml, 2 workers, 24 steps: checkpoints every 4 steps, kNN at 12 and 24) uses a
private SeaweedFS and a private MLflow server (SQLite, artifacts proxied to that SeaweedFS),
both started by this test and stopped by PID; Ray is the session cluster (the job's runtime
env carries the private endpoints; the private SeaweedFS takes the stack's credentials,
which Ray's workers already have). `tests.faults.soak_driver` stops rank 0 at chosen log
steps (gates) until the test has applied the fault due there:

    step  4  SeaweedFS SIGKILLed; the step-4 checkpoint's upload (through MLflow) meets it
             down; restarted on the same ports and data once MLflow reported the failure
    step  8  (once checkpoint 4 committed) MLflow stopped for 60 s: the step-8 checkpoint
             commits after it is back (the step-12 save waits for it); metrics are buffered
             and the loop keeps stepping meanwhile (this replaces the earlier 20 s outage
             test; the killed-worker test it also covers is gone from test_train_faults)
    step 14  one reader actor SIGKILLed: the epoch fails, Ray Train restarts the workers,
             which resume from the newest complete checkpoint
    step 18  train worker rank 0 SIGKILLed (by PID): restart and resume again
    step 20  SeaweedFS SIGKILLed again across the step-20 checkpoint, then restarted

At the end: one FINISHED run of 24 steps; every metric step logged exactly once and the
loss of every step equal to the uninterrupted session reference run's; the final encoder
weights equal to the reference's (fixed seed, CPU); every checkpoint (4 ... 24, keep=8)
present and loadable; every shard, offsets index and manifest object unchanged (ETags).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

from pipeline.config import StorageConfig
from pipeline.stack.launch import mlflow_cmd, server_env
from pipeline.stack.procs import (
    LOOPBACK,
    ProcRef,
    pick_ports,
    spawn,
    stop,
    tree,
    wait_until,
)
from pipeline.storage import Storage
from tests.ingest.weed import PrivateWeed
from tests.train.fixtures import (
    PER_SHARD,
    TEST_SAMPLES,
    TRAIN_SAMPLES,
    Dataset,
    Reference,
    encoder_weights,
    metric_steps,
    start_train,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 24
OUTAGE_S = 60.0
S3_ERROR = "Could not connect to the endpoint URL"  # MLflow's log: its S3 upload failed


class PrivateMlflow:
    """`mlflow server` on its own port and SQLite DB, artifacts on the private SeaweedFS."""

    def __init__(self, tmp: Path, weed: PrivateWeed) -> None:
        self.port = pick_ports(1)[0]
        self.uri = f"http://{LOOPBACK}:{self.port}"
        self.tmp, self.log = tmp, tmp / "mlflow.log"
        self.env = server_env({**weed.env, "MLFLOW_S3_ENDPOINT_URL": weed.endpoint})
        self.refs: list[ProcRef] = []

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.uri}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start(self) -> None:
        proc = spawn(mlflow_cmd(self.port, self.tmp), env=self.env, log_path=self.log)
        self.refs = [ProcRef.of(proc.pid)]
        wait_until(self.healthy, what=f"private MLflow at {self.uri}", timeout_s=180,
                   log_path=self.log, proc=proc)
        self.refs = tree(self.refs)

    def stop(self) -> None:
        stop(tree(self.refs))
        self.refs = []

    def s3_errors(self) -> int:
        return self.log.read_text(errors="replace").count(S3_ERROR) if self.log.exists() else 0


@pytest.fixture
def private_stack(stack: Any, tmp_path: Path) -> Iterator[tuple[PrivateWeed, PrivateMlflow]]:
    weed = PrivateWeed(tmp_path / "weed", buckets=("mlflow",),
                       credentials=(stack.access_key, stack.secret_key))
    (tmp_path / "weed").mkdir()
    mlflow = PrivateMlflow(tmp_path, weed)
    try:
        weed.start()
        mlflow.start()
        yield weed, mlflow
    finally:
        try:
            mlflow.stop()
        finally:
            weed.stop()


def _write_data(weed: PrivateWeed) -> tuple[Dataset, Storage]:
    """The session's `fmnist_tiny` shards, byte for byte, on the private SeaweedFS."""
    from pipeline.shards.writer import write_shards

    storage = Storage(StorageConfig(endpoint_url=weed.endpoint))
    root = "s3://corpus/soak"
    m = write_shards("fashion-mnist:train", f"{root}/train", storage=storage,
                     max_samples=TRAIN_SAMPLES, samples_per_shard=PER_SHARD, progress=False)
    write_shards("fashion-mnist:test", f"{root}/test", storage=storage,
                 max_samples=TEST_SAMPLES, samples_per_shard=PER_SHARD, progress=False)
    return Dataset(f"{root}/train", f"{root}/test", m.sha256), storage


def _etags(storage: Storage, prefix: str) -> dict[str, str]:
    return {uri: info.etag for uri, info in storage.list_info(prefix)}


class Schedule:
    """The test's side of the gates (see `tests.faults.soak_driver`)."""

    def __init__(self, folder: Path, tp: Any) -> None:
        self.folder, self.tp, self.t0 = folder, tp, time.monotonic()

    def note(self, what: str) -> None:
        """A timeline line on stderr (shown with a failure's output)."""
        print(f"[soak] {time.monotonic() - self.t0:6.1f}s {what}", file=sys.stderr, flush=True)

    def reach(self, step: int, timeout_s: float = 420.0) -> dict[str, Any]:
        path = self.folder / f"gate-{step}.json"
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            assert self.tp.proc.poll() is None, \
                f"the run ended before step {step}:\n{self.tp.text[-6000:]}"
            assert time.monotonic() < deadline, \
                f"step {step} not reached in {timeout_s:.0f} s:\n{self.tp.text[-6000:]}"
            time.sleep(0.1)
        self.note(f"rank 0 waits at step {step}")
        return dict(json.loads(path.read_text()))

    def go(self, step: int) -> None:
        (self.folder / f"go-{step}").touch()
        self.note(f"step {step} released")


def _s3_restart(weed: PrivateWeed, mlflow: PrivateMlflow, sched: Schedule, step: int) -> None:
    """Kill SeaweedFS at the gate of `step`, let the run go on into that step's checkpoint,
    and restart SeaweedFS once MLflow logged a failed S3 upload (the run met the outage)."""
    before = mlflow.s3_errors()
    weed.kill()
    sched.note("SeaweedFS killed")
    sched.go(step)
    deadline = time.monotonic() + 120
    while mlflow.s3_errors() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    sched.note("MLflow reported a failed S3 upload")
    weed.start()
    sched.note("SeaweedFS restarted")
    assert mlflow.s3_errors() > before, f"the step-{step} checkpoint never met S3 down"


def _run_id(tp: Any) -> str:
    found = [m.group(1) for _, line in tp.lines
             if (m := re.search(r"\[mocopipe\] MLflow run ([0-9a-f]{32}) ", line))]
    assert found, tp.text[-4000:]
    return found[0]


def _wait_for(ok: Any, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(0.5)


def _reader_pids(stack: Any, job_id: str) -> list[int]:
    from pipeline.stack.local import _http_json

    actors = _http_json(f"{stack.ray_dashboard}/api/v0/actors?detail=true&limit=10000",
                        stack.ray_token)["data"]["result"]["result"]
    return sorted(a["pid"] for a in actors if a["class_name"] == "ShardReader"
                  and a["state"] == "ALIVE" and a["job_id"] == job_id)


@pytest.mark.timeout(1500)  # ~5 min on a loaded 2-core machine, plus the session reference run
def test_training_survives_a_fault_schedule_exactly(stack: Any, private_stack: Any,
                                                   reference_run: Reference,
                                                   tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from pipeline.train.checkpoint import CheckpointManager, mlflow_repo, unpack
    from pipeline.train.loop import METRIC_KEYS

    weed, mlflow = private_stack
    data, storage = _write_data(weed)
    shards_before = _etags(storage, "s3://corpus/soak/")
    gates = tmp_path / "gates"
    gates.mkdir()
    name = f"soak-{uuid.uuid4().hex[:8]}"
    env = {**weed.env, "MLFLOW_TRACKING_URI": mlflow.uri, "MLFLOW_S3_ENDPOINT_URL": weed.endpoint}
    tp = start_train(data, name, "train.report_every=2", "checkpoint.keep=8",
                     "ray.max_failures=4", "storage.max_retries=8", env=env,
                     driver=("-m", "tests.faults.soak_driver",
                             "--gates", f"{gates}:4,8,14,18,20"))
    sched = Schedule(gates, tp)
    try:
        sched.reach(4)
        _s3_restart(weed, mlflow, sched, 4)

        sched.reach(8)
        # the step-4 upload met S3 down and may still wait in MLflow's client backoff: let it
        # commit first, so the MLflow outage is met by the step-8 checkpoint alone
        ckpt = CheckpointManager(mlflow_repo(_run_id(tp), mlflow.uri), every_steps=4, keep=8)
        _wait_for(lambda: ckpt.latest_step() == 4, "checkpoint 4 committed", 300)
        sched.note("checkpoint 4 committed")
        mlflow.stop()
        down_at = time.monotonic()
        sched.note("MLflow stopped")
        sched.go(8)
        time.sleep(OUTAGE_S)
        mlflow.start()
        up_at = time.monotonic()
        sched.note("MLflow back")

        gate = sched.reach(14)
        readers = _reader_pids(stack, gate["job_id"])
        assert len(readers) == 2, readers  # one per train worker (tiny.toml)
        os.kill(readers[0], signal.SIGKILL)
        sched.note(f"reader actor {readers[0]} killed")
        sched.go(14)

        gate = sched.reach(18)
        os.kill(gate["pid"], signal.SIGKILL)  # train worker rank 0, waiting in its report
        sched.note(f"train worker rank 0 ({gate['pid']}) killed")
        sched.go(18)

        sched.reach(20)
        _s3_restart(weed, mlflow, sched, 20)
        rc = tp.wait(420)
        sched.note(f"run ended ({rc})")
    finally:
        tp.kill()
    out = tp.text
    for t, line in tp.lines:
        if any(k in line for k in ("[mocopipe] step", "resumed", "Error", "MLflow run")):
            print(f"[soak] {t - sched.t0:6.1f}s | {line.rstrip()[:160]}", file=sys.stderr)
    assert rc == 0, f"the soak run exited {rc}:\n{out[-8000:]}"

    # it met every fault: MLflow's failed S3 uploads (asserted above), the checkpoint wait
    # across the MLflow outage, the reader's death, two restarts from a checkpoint
    late = [t for t, line in tp.lines if "[mocopipe] step 14/" in line]
    assert late and min(late) > up_at > down_at, "a step after 12 ran while MLflow was down"
    # ... and before that the loop kept stepping with MLflow down (metrics are buffered by the
    # sink's thread; only the next checkpoint save waits for the pending commit)
    during = [line for t, line in tp.lines if "[mocopipe] step " in line and down_at < t < up_at]
    assert during, "no training step was taken while MLflow was down"
    assert "ShardReader" in out and ("ActorDiedError" in out or "RayActorError" in out), \
        out[-6000:]
    resumed = [int(line.split()[-1]) for line in out.splitlines()
               if "resumed from checkpoint step" in line]
    assert len(resumed) == 2 and resumed[0] in (8, 12) and resumed[1] in (12, 16), resumed

    summary = tp.summary()
    assert summary["steps"] == STEPS and not summary["stopped"]
    client = MlflowClient(tracking_uri=mlflow.uri)
    run_id = summary["run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    exp = client.get_experiment_by_name("traintest")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run_id]
    logged = list(range(2, STEPS + 1, 2))
    for key in METRIC_KEYS:  # each log step exactly once: none lost, none twice
        if key not in ("knn_top1", "epoch_samples"):  # those two: once per epoch
            assert metric_steps(client, run_id, key) == logged, key
    assert metric_steps(client, run_id, "knn_top1") == [12, STEPS]
    assert metric_steps(client, run_id, "epoch_samples") == [12, STEPS]
    ref = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    ref_id = reference_run.summary["run_id"]
    want_loss = {m.step: m.value for m in ref.get_metric_history(ref_id, "loss")}
    assert {m.step: m.value for m in client.get_metric_history(run_id, "loss")} == want_loss

    got = encoder_weights(client, run_id, tmp_path / "got")
    want = encoder_weights(ref, ref_id, tmp_path / "want")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the uninterrupted run"

    ckpt = CheckpointManager(mlflow_repo(run_id, mlflow.uri), every_steps=4, keep=8)
    assert ckpt.steps() == list(range(4, STEPS + 1, 4))  # none lost
    for step in ckpt.steps():
        files = ckpt.load(step)  # every file's sha256 checked against the marker
        assert unpack(files["state.pt"])["world_size"] == 2

    assert _etags(storage, "s3://corpus/soak/") == shards_before  # no shard lost or rewritten
