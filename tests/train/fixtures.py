"""Fixtures for the train integration tests (a pytest plugin loaded by tests/conftest.py): tiny Fashion-MNIST shards on the session stack,
a `mocopipe train` subprocess runner, and ONE uninterrupted reference run shared by the
end-to-end test and the fault tests (which compare their final weights with it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TINY = Path(__file__).with_name("tiny.toml")
REPO = Path(__file__).resolve().parents[2]
TRAIN_SAMPLES, TEST_SAMPLES, PER_SHARD = 384, 128, 64  # 12 steps/epoch at 2 x 16


@dataclass
class Dataset:
    train: str
    test: str
    manifest_sha: str


@dataclass
class TrainProc:
    """A running `mocopipe train` subprocess; stdout lines are collected with timestamps."""

    proc: subprocess.Popen
    lines: list[tuple[float, str]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        if self.reader is not None:
            self.reader.join(timeout=10)
        return rc

    @property
    def text(self) -> str:
        return "".join(line for _, line in self.lines)

    def summary(self) -> dict[str, Any]:
        """The `--json` summary: the last stdout line."""
        last = [line for _, line in self.lines if line.startswith("{")]
        assert last, f"no JSON summary in the output:\n{self.text[-4000:]}"
        return json.loads(last[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def fmnist_tiny(stack: Any, storage: Any) -> Dataset:
    """384 train / 128 test Fashion-MNIST samples, 64 per shard, under a unique prefix."""
    from pipeline.shards.writer import write_shards

    root = f"s3://corpus/train-tests-{uuid.uuid4().hex[:8]}"
    m = write_shards("fashion-mnist:train", f"{root}/train", storage=storage,
                     max_samples=TRAIN_SAMPLES, samples_per_shard=PER_SHARD, progress=False)
    write_shards("fashion-mnist:test", f"{root}/test", storage=storage,
                 max_samples=TEST_SAMPLES, samples_per_shard=PER_SHARD, progress=False)
    return Dataset(f"{root}/train", f"{root}/test", m.sha256)


def overrides(data: Dataset, run_name: str, *extra: str) -> list[str]:
    sets = [f'data.train="{data.train}"', f'data.eval_train="{data.train}"',
            f'data.eval_test="{data.test}"', f'ray.run_name="{run_name}"',
            f'mlflow.registered_model="{run_name}-encoder"', *extra]
    return [arg for s in sets for arg in ("--set", s)]


def start_train(data: Dataset, run_name: str, *extra: str, env: dict[str, str] | None = None,
                driver: tuple[str, ...] = ("-m", "pipeline.cli", "train")) -> TrainProc:
    """Start `mocopipe train tiny.toml --json` (or another `driver` taking the same
    arguments) in its own session (so it can be killed)."""
    cmd = [sys.executable, *driver, str(TINY), "--json", *overrides(data, run_name, *extra)]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {}),
                                                "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    tp = TrainProc(proc)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tp.lines.append((time.monotonic(), line))

    tp.reader = threading.Thread(target=read, daemon=True)
    tp.reader.start()
    return tp


def run_train(data: Dataset, run_name: str, *extra: str, env: dict[str, str] | None = None,
              timeout: float = 900, driver: tuple[str, ...] = ("-m", "pipeline.cli", "train")
              ) -> TrainProc:
    tp = start_train(data, run_name, *extra, env=env, driver=driver)
    try:
        rc = tp.wait(timeout)
    finally:
        tp.kill()
    assert rc == 0, f"mocopipe train exited {rc}:\n{tp.text[-6000:]}"
    return tp


@dataclass
class Reference:
    run_name: str
    summary: dict[str, Any]
    output: str


@pytest.fixture(scope="session")
def reference_run(fmnist_tiny: Dataset) -> Iterator[Reference]:
    """One uninterrupted 2-worker run of tiny.toml (24 steps)."""
    name = f"ref-{uuid.uuid4().hex[:8]}"
    tp = run_train(fmnist_tiny, name)
    yield Reference(name, tp.summary(), tp.text)


def mlflow_client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def metric_steps(client: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def encoder_weights(client: Any, run_id: str, tmp: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = client.download_artifacts(run_id, "encoder.safetensors", str(tmp))
    return load_file(path)
