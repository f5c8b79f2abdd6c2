"""`mocopipe bench pipeline CONFIG`: real training steps/s vs the same workers on in-memory batches.

Two training runs of the config through `run_training` (Ray Train, ``workers`` DDP workers),
in one bench run, so both see the same machine:

- ``pipeline``: the real path, S3 -> reader actors -> object store -> loader -> device
  augment -> MoCo step;
- ``bare``: the same run with ``ingest.synthetic = true`` (`pipeline.ingest.synthetic`):
  pre-built uint8 batches of the same shapes, everything after the loader identical.

Each runs ``warmup + steps`` steps and logs a window every ``log_every`` steps; the step
rate is taken from the windows after ``warmup`` (the runs' own ``step_time`` metrics), so
start-up is not in it. Reported: ``pipeline_vs_bare`` (ratio of step rates, goal >= 0.95),
``data_wait_frac`` (mean and max over the pipeline run's windows after ``warmup``, goal <
0.05), ``first_step_s`` (from the ``run_training`` call to the end of step 1: the run
summary's ``first_step_total_s``, which the workers measure against the call's wall-clock
time; if a trainer does not report it, estimated from the first logged window), with
``startup``, the run's own breakdown (the ``startup/*`` metrics: driver, Ray init, worker
group, process group, manifest, readers, setup, resume, first batch/step), and
``reader_cpu_s_per_step`` / ``trainer_cpu_s_per_step`` / ``cores_busy`` (`bench.cpu`: the
reader actors' and train workers' CPU over the timed window) with ``cpu_bound_prediction``,
the ratio to expect if the cores are the limit (bare step CPU / real step CPU, readers
included), and ``logging_overhead``: the CPU seconds that rank 0's MLflow logging spends (the metric calls,
the async flush thread and the system-metrics sampler, driven at the pipeline run's window
rate against the same server, nothing else running in this process) divided by the step
time they cover. Bench runs go to the experiment ``<train.name>-bench`` and register
``<train.name>-bench-encoder``, never the config's own run history or model.
"""

from __future__ import annotations

import io
import time
from typing import Any

from pipeline.config import Config, from_dict


def bench_config(cfg: Config, *, total: int, log_every: int, workers: int,
                 synthetic: bool) -> Config:
    """The config a bench run trains: ``total`` steps, no mid-run checkpoint or kNN."""
    raw = cfg.to_dict()
    name = raw["train"]["name"]
    raw["train"].update(max_steps=total, epochs=max(int(raw["train"]["epochs"]), total),
                        log_every=log_every)
    raw["ray"].update(num_workers=workers, run_name="")
    raw["ingest"]["synthetic"] = synthetic
    raw["checkpoint"]["every_steps"] = 10 * total  # only the final one, after the timing
    raw["eval"]["every_epochs"] = 0
    raw["data"].update(eval_train="", eval_test="")  # no kNN monitor: not a train step
    raw["mlflow"].update(experiment=f"{name}-bench", registered_model=f"{name}-bench-encoder")
    return from_dict(raw)


def _windows(client: Any, run_id: str, key: str, after: int) -> list[tuple[int, float, int]]:
    """``(step, value, timestamp_ms)`` of metric ``key`` logged at steps > ``after``."""
    hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [(m.step, m.value, m.timestamp) for m in hist if m.step > after]


def train_run(cfg: Config, *, warmup: int) -> dict[str, Any]:
    """One bench training run: step rate after ``warmup``, data-wait and first-step figures."""
    from pipeline.tracking import client_for, resolve_tracking_uri
    from pipeline.train.ray_trainer import run_training

    from pipeline.bench.cpu import CpuSampler

    t0 = time.time()
    with CpuSampler() as sampler:
        summary = run_training(cfg)
    client = client_for(resolve_tracking_uri(cfg.mlflow))
    times = _windows(client, summary["run_id"], "step_time", 0)
    waits = _windows(client, summary["run_id"], "data_wait_frac", warmup)
    timed = [(s, v) for s, v, _ in times if s > warmup]
    if not timed or len(waits) != len(timed):
        raise RuntimeError(f"bench pipeline: run {summary['run_id']} logged no step_time "
                           f"after step {warmup} (steps {summary['steps']})")
    spans, prev = [], warmup
    for s, v in timed:
        spans.append((s - prev, v))
        prev = s
    seconds = sum(n * v for n, v in spans)
    first_step, _, first_ts = times[0]
    first_step_s = summary.get("first_step_total_s")
    metrics = client.get_run(summary["run_id"]).data.metrics  # the latest value of each
    startup = {k.split("/", 1)[1]: round(v, 3) for k, v in metrics.items()
               if k.startswith("startup/")}
    median = sorted(v for _, v in spans)[len(spans) // 2]
    # CPU of the reader actors and train workers between the end of the warm-up window and
    # the last window (the metric timestamps: when rank 0 logged them)
    start = [ts for s, _, ts in times if s == warmup]
    w0, w1 = (start[0] if start else times[0][2]) / 1000, times[-1][2] / 1000
    n_timed = sum(n for n, _ in spans)
    cpu = {kind: sampler.cpu_between(kind, w0, w1) for kind in ("reader", "trainer")}
    return {
        "run_id": summary["run_id"], "steps": summary["steps"],
        "steps_per_s": sum(n for n, _ in spans) / max(seconds, 1e-9),
        "step_time_s": seconds / max(sum(n for n, _ in spans), 1),
        "window_step_time_s": median,
        "data_wait_frac": sum(v for _, v, _ in waits) / len(waits),
        "data_wait_frac_max": max(v for _, v, _ in waits),
        "first_step_s": float(first_step_s) if first_step_s is not None
        else first_ts / 1000 - t0 - (first_step - 1) * median,
        "first_step_source": "summary" if first_step_s is not None else "outside",
        "startup": startup,
        "wall_s": time.time() - t0,
        "reader_cpu_s_per_step": cpu["reader"] / max(n_timed, 1),
        "trainer_cpu_s_per_step": cpu["trainer"] / max(n_timed, 1),
        "cores_busy": (cpu["reader"] + cpu["trainer"]) / max(w1 - w0, 1e-9),
        "reader_processes": sampler.processes("reader"),
    }


def logging_cpu(cfg: Config, *, windows: int, window_s: float) -> float:
    """CPU seconds of rank 0's MLflow logging (the training loop's `MlflowSink`: batched async
    metrics + system metrics, and its log line) for ``windows`` windows of ``window_s`` each."""
    from pipeline.tracking import client_for, finish_run, open_run
    from pipeline.train.loop import METRIC_KEYS
    from pipeline.train.services import MlflowSink

    run = open_run(cfg, run_name=f"bench-logging-{int(time.time())}")
    metrics = {k: 0.5 for k in METRIC_KEYS if k != "knn_top1"}
    out = io.StringIO()
    c0 = time.process_time()
    sink = MlflowSink(run, cfg.mlflow, METRIC_KEYS)
    try:
        for i in range(windows):
            step = (i + 1) * cfg.train.log_every
            sink.log(metrics, step)
            print(f"[mocopipe] step {step} " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
                  file=out, flush=True)
            time.sleep(window_s)
    finally:
        sink.close(timeout=60.0)
        finish_run(client_for(run.tracking_uri), run.run_id, "FINISHED")
    return time.process_time() - c0


def bench_pipeline(cfg: Config, *, warmup: int = 20, steps: int = 40, workers: int = 2,
                   log_every: int = 10, logging_windows: int = 6) -> dict[str, Any]:
    """Run both variants and the logging measurement; returns the figures (see module doc)."""
    if warmup < 1 or steps < log_every or log_every < 1 or workers < 1 or logging_windows < 1 \
            or warmup % log_every or steps % log_every:
        raise ValueError(f"bench pipeline: bad arguments warmup={warmup} steps={steps} "
                         f"log_every={log_every} workers={workers} (warmup and steps must "
                         f"be multiples of log_every)")
    total = warmup + steps
    runs = {}
    for name, synthetic in (("pipeline", False), ("bare", True)):
        runs[name] = train_run(bench_config(cfg, total=total, log_every=log_every,
                                            workers=workers, synthetic=synthetic),
                               warmup=warmup)
    pipe, bare = runs["pipeline"], runs["bare"]
    window_s = log_every * pipe["step_time_s"]
    cpu = logging_cpu(bench_config(cfg, total=total, log_every=log_every, workers=workers,
                                   synthetic=False), windows=logging_windows, window_s=window_s)
    return {
        "config": cfg.train.name, "workers": workers, "warmup_steps": warmup,
        "timed_steps": steps, "per_worker_batch": cfg.train.per_worker_batch,
        "image_size": cfg.data.image_size,
        "pipeline_steps_per_s": pipe["steps_per_s"], "bare_steps_per_s": bare["steps_per_s"],
        "pipeline_vs_bare": pipe["steps_per_s"] / bare["steps_per_s"],
        "data_wait_frac": pipe["data_wait_frac"],
        "data_wait_frac_max": pipe["data_wait_frac_max"],
        "bare_data_wait_frac": bare["data_wait_frac"],
        "first_step_s": pipe["first_step_s"], "first_step_source": pipe["first_step_source"],
        "startup": pipe["startup"],
        "logging_cpu_s": cpu, "logging_overhead": cpu / (logging_windows * window_s),
        # If the machine's cores are the limit, a step costs its CPU seconds: the expected
        # ratio is the bare step's CPU over the real step's CPU, readers included.
        "reader_cpu_s_per_step": pipe["reader_cpu_s_per_step"],
        "cpu_bound_prediction": bare["trainer_cpu_s_per_step"] / max(
            pipe["trainer_cpu_s_per_step"] + pipe["reader_cpu_s_per_step"], 1e-9),
        "runs": runs,
    }


def format_report(r: dict[str, Any]) -> str:
    """Human-readable lines for the CLI."""
    return "\n".join([
        f"config {r['config']}: {r['workers']} workers x {r['per_worker_batch']} at "
        f"{r['image_size']} px; {r['timed_steps']} timed steps after {r['warmup_steps']}",
        f"steps/s: pipeline {r['pipeline_steps_per_s']:.2f}  bare (in-memory batches) "
        f"{r['bare_steps_per_s']:.2f}  -> pipeline_vs_bare {r['pipeline_vs_bare']:.2f} "
        f"(goal >= 0.95)",
        f"data_wait_frac after step {r['warmup_steps']}: mean {r['data_wait_frac']:.3f} "
        f"max {r['data_wait_frac_max']:.3f} (goal < 0.05)",
        f"CPU s/step: readers {r['reader_cpu_s_per_step']:.3f}, trainers "
        f"{r['runs']['pipeline']['trainer_cpu_s_per_step']:.3f} (bare "
        f"{r['runs']['bare']['trainer_cpu_s_per_step']:.3f}); cores busy "
        f"{r['runs']['pipeline']['cores_busy']:.2f} (bare {r['runs']['bare']['cores_busy']:.2f})"
        f" -> cpu_bound_prediction {r['cpu_bound_prediction']:.2f}",
        f"logging_overhead {r['logging_overhead']:.4f} of step time (goal < 0.01); "
        f"first_step_s {r['first_step_s']:.1f} ({r['first_step_source']}; goal <= 20): "
        + " ".join(f"{k} {v:.2f}" for k, v in r["startup"].items() if k != "total_s"),
    ])
