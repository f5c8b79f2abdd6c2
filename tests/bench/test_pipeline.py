"""`mocopipe bench pipeline` in a tiny dry form on the session stack (figures not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.train.fixtures import REPO, TINY, Dataset, mlflow_client

@pytest.mark.integration
@pytest.mark.slow
def test_bench_pipeline_reports_every_figure_from_two_real_runs(fmnist_tiny: Dataset) -> None:
    cmd = [sys.executable, "-m", "pipeline.cli", "bench", "pipeline", str(TINY), "--json",
           "--warmup", "2", "--steps", "4", "--log-every", "2",
           "--set", f'data.train="{fmnist_tiny.train}"', "--set", "ingest.stream_ranges=2"]
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                         capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    runs = report["runs"]
    assert runs["pipeline"]["steps"] == runs["bare"]["steps"] == 6
    assert report["pipeline_vs_bare"] == pytest.approx(
        report["pipeline_steps_per_s"] / report["bare_steps_per_s"])
    assert report["pipeline_steps_per_s"] > 0 and report["bare_steps_per_s"] > 0
    assert 0 <= report["data_wait_frac"] <= report["data_wait_frac_max"] <= 1
    assert 0 < report["logging_overhead"] < 1 and report["first_step_s"] > 0
    # first_step_s is the whole way from the run_training call (the workers' figure against
    # the driver's clock), so it holds the breakdown's parts that happen one after another
    start = report["startup"]
    assert report["first_step_source"] == "summary" and start["total_s"] == pytest.approx(
        report["first_step_s"], abs=1e-3)
    assert report["first_step_s"] > (start["driver_s"] + start["ray_init_s"]
                                     + start["worker_group_s"] + start["first_step_s"])
    # where the CPU went: the real run's reader actors (1 per worker in tiny.toml) were
    # sampled and did work; the bare run's workers stepped without any
    assert runs["pipeline"]["reader_processes"] >= 2 and report["reader_cpu_s_per_step"] > 0
    assert runs["bare"]["reader_cpu_s_per_step"] < 0.1 * report["reader_cpu_s_per_step"]
    assert runs["pipeline"]["trainer_cpu_s_per_step"] > 0
    assert runs["bare"]["trainer_cpu_s_per_step"] > 0 and report["cpu_bound_prediction"] > 0
    client = mlflow_client()
    for name, synthetic in (("pipeline", "false"), ("bare", "true")):
        run = client.get_run(runs[name]["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.params.get("ingest.synthetic") == synthetic
        exp = client.get_experiment(run.info.experiment_id)
        assert exp.name == "traintest-bench"  # never the config's own experiment
    for name in runs:  # windows at steps 2, 4, 6: the timed ones are 4 and 6
        history = client.get_metric_history(runs[name]["run_id"], "step_time")
        assert sorted(m.step for m in history) == [2, 4, 6]


@pytest.mark.unit
def test_bench_config_trains_the_configured_path_without_side_runs() -> None:
    from pipeline.bench.pipeline import bench_config
    from pipeline.config import load_config

    cfg = load_config(str(REPO / "jobs" / "configs" / "demo.toml"))
    bare = bench_config(cfg, total=60, log_every=10, workers=2, synthetic=True)
    assert bare.ingest.synthetic and not cfg.ingest.synthetic
    assert bare.train.max_steps == 60 and bare.train.log_every == 10
    assert bare.data.eval_train == bare.data.eval_test == ""  # no kNN pass in the timing
    assert bare.checkpoint.every_steps > 60 and bare.eval.every_epochs == 0
    assert bare.mlflow.experiment == "demo-bench"
    assert bare.mlflow.registered_model == "demo-bench-encoder"
    assert bare.data.train == cfg.data.train and bare.model == cfg.model
