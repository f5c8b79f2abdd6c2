"""Fail before the cluster: each bad run is refused by `mocopipe train` in one line naming
the key or endpoint, within 30 s, with no MLflow run created (against the real local stack)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.train.preflight import PreflightError, check_placement
from pipeline.config import load_config

pytestmark = pytest.mark.integration

TINY = str(Path(__file__).with_name("tiny.toml"))


@dataclass(frozen=True)
class Data:
    train: str  # 2 shards x 64 samples
    test: str
    model: str  # a registered model whose source run was trained with model.width=16


@pytest.fixture(scope="module")
def data(storage: Any) -> Data:
    from pipeline.shards.writer import write_shards
    from pipeline.tracking import client_for

    prefix = f"s3://corpus/preflight-{uuid.uuid4().hex[:8]}"
    write_shards("fashion-mnist:train", f"{prefix}/train", storage=storage, max_samples=128,
                 samples_per_shard=64, workers=1, progress=False)
    write_shards("fashion-mnist:test", f"{prefix}/test", storage=storage, max_samples=64,
                 samples_per_shard=64, workers=1, progress=False)
    client = client_for(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.create_experiment(f"preflight-src-{uuid.uuid4().hex[:6]}")
    run = client.create_run(exp)
    for key, value in (("model.arch", "small_cnn"), ("model.width", "16"),
                       ("model.pool_grid", "1"), ("data.channels", "1")):
        client.log_param(run.info.run_id, key, value)
    client.log_text(run.info.run_id, "placeholder", "encoder/MLmodel")
    client.set_terminated(run.info.run_id)
    model = f"preflight-wide-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(model)
    client.create_model_version(model, f"{run.info.artifact_uri}/encoder", run.info.run_id)
    return Data(f"{prefix}/train", f"{prefix}/test", model)


# (case id, extra --set items, the key or endpoint the one line must name)
CASES = [
    ("batch-over-rank-share", ["train.per_worker_batch=80", "moco.queue_size=160"],
     "train.per_worker_batch"),
    ("train-shards-typo", ['data.train_shards=["shard-00000O.tar"]'], "data.train_shards"),
    ("negative-seed", ["train.seed=-1"], "train.seed"),
    ("init-from-missing", ['train.init_from="models:/no-such-model-x/1"'], "train.init_from"),
    ("init-from-incompatible", ["INIT_FROM_WIDE"], "train.init_from"),
    ("eval-manifest-missing", ['data.eval_train="s3://corpus/no-such-eval"', "EVAL_TEST"],
     "data.eval_train"),
    ("more-workers-than-cpus", ["ray.num_workers=64", "train.per_worker_batch=2"],
     "ray.num_workers"),
    ("more-readers-than-cpus", ["ingest.readers_per_worker=64"], "ingest.readers_per_worker"),
    # the local stack's head offers "trainer" (and "reader"): a GPU-node resource it lacks
    ("worker-resource-absent", ["ray.resources_per_worker={gpu_node = 1}"],
     "ray.resources_per_worker.gpu_node"),
    ("mlflow-unreachable", ['mlflow.tracking_uri="http://127.0.0.1:9"'], "http://127.0.0.1:9"),
    ("ray-unreachable", ['ray.address="127.0.0.1:9"'], "ray.address"),
]


def start_cost() -> float:
    """Seconds, on this (busy) machine, of a `mocopipe train` that fails at once (config
    validation): interpreter start and CLI imports. The 30 s budget is for the checks (their
    imports included), so each case subtracts this, measured right before it under the same
    load."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", TINY, "--set",
                           "train.seed=-1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "train.seed" in done.stderr, done.stderr[-2000:]
    return time.monotonic() - started


@pytest.mark.parametrize("case,extra,names", CASES, ids=[c[0] for c in CASES])
def test_bad_run_fails_in_one_line_before_the_cluster(stack, data, case, extra,
                                                      names) -> None:
    from pipeline.tracking import client_for

    name = f"preflight-{case}-{uuid.uuid4().hex[:6]}"
    subst = {"INIT_FROM_WIDE": f'train.init_from="models:/{data.model}/1"',
             "EVAL_TEST": f'data.eval_test="{data.test}"'}
    items = [f'data.train="{data.train}"', f'train.name="{name}"', "ray.num_workers=2",
             "ray.cpus_per_worker=0.5", "train.max_steps=2", "mlflow.system_metrics=false",
             *[subst.get(e, e) for e in extra]]
    argv = [a for item in items for a in ("--set", item)]
    start = start_cost()
    started = time.monotonic()
    # A fresh `mocopipe train` process, as a user runs it (its stderr is what they see).
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", TINY, *argv],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    elapsed = time.monotonic() - started
    out, err = done.stdout, done.stderr
    assert done.returncode == 2, (out[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mocopipe: error: "), err[-2000:]
    assert names in lines[0], lines[0]
    print(f"[preflight] {case}: {elapsed:.1f} s wall; a process failing at once: {start:.1f} s")
    assert elapsed - start < 30, f"{case}: {elapsed:.1f} s ({start:.1f} s process start)"
    assert "MLflow run" not in out  # the driver never got as far as opening one
    assert client_for(os.environ["MLFLOW_TRACKING_URI"]).get_experiment_by_name(name) is None


def test_good_tiny_config_passes_preflight(stack, data) -> None:
    """The same checks pass a good config (in a fresh process: it connects to the stack's
    Ray to compare resources), so the failures above are the checks, not the setup."""
    items = [f'data.train="{data.train}"', "ray.num_workers=2", "ray.cpus_per_worker=0.5",
             f'data.eval_train="{data.train}"', f'data.eval_test="{data.test}"']
    code = ("import sys; from pipeline.config import load_config; "
            "from pipeline.train.preflight import preflight; "
            "preflight(load_config(sys.argv[1], sys.argv[2:])); print('preflight ok')")
    done = subprocess.run([sys.executable, "-c", code, TINY, *items], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "preflight ok" in done.stdout, done.stderr[-2000:]


def test_placement_counts_per_node_and_in_total() -> None:
    cfg = load_config(TINY, ["ray.num_workers=4", "ray.cpus_per_worker=1",
                             "ingest.readers_per_worker=1", "ingest.reader_num_cpus=1",
                             "ingest.reader_resources={reader = 0.5}"])
    check_placement(cfg, [{"CPU": 4.0}, {"CPU": 4.0, "reader": 4.0}])
    with pytest.raises(PreflightError, match=r"^ray.num_workers / ingest.readers_per_worker: .*"
                                             r"= 8 CPU, but the Ray cluster has 7 CPU"):
        check_placement(cfg, [{"CPU": 3.0}, {"CPU": 4.0, "reader": 4.0}])
    with pytest.raises(PreflightError, match=r"^ingest.reader_resources.reader: no node"):
        check_placement(cfg, [{"CPU": 16.0, "reader": 0.25}])
    gpu = load_config(TINY, ["ray.use_gpu=true", "moco.bn=\"shuffle\""])
    with pytest.raises(PreflightError, match=r"^ray.use_gpu: no node .* 1 GPU"):
        check_placement(gpu, [{"CPU": 16.0}])
