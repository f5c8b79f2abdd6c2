"""`mocopipe train`: the driver. Ray Train's TorchTrainer runs `worker.ray_entry` on N DDP
workers.

    ray (embedded or attached) -> MLflow run (new, or continued by run name / --resume)
    -> TorchTrainer(ScalingConfig, RunConfig(name, storage_path, FailureConfig)).fit()
    -> summary from the Ray Train `Result` (rank 0 reports it at the end)

Fault tolerance: when a worker dies, Ray Train restarts the worker group (up to
`ray.max_failures` times); the new workers find the run id in their config, load the latest
complete checkpoint from the run's artifacts and continue the same MLflow run. When the
driver itself died, running `mocopipe train` again with the same `ray.run_name` (or
`--resume RUN`) finds the MLflow run by its `mocopipe.run_name` tag and continues it
(`--resume` of a run whose driver still runs is refused). SIGTERM on the driver sets a stop
flag (a tiny named actor) that rank 0 polls every `train.log_every` steps; all ranks then
save a checkpoint and return; the summary says `stopped`, and the CLI and the Ray job exit 143 (`cli.EXIT_STOPPED`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
import uuid
from typing import Any

from pipeline.config import Config, validate_training
from pipeline.tracking import (
    RunRef,
    client_for,
    default_run_name,
    log_dataset_input,
    finish_run,
    open_run,
    provenance_tags,
    run_url,
)
from pipeline.envvars import forwarded_env
from pipeline.train.preflight import preflight
from pipeline.train.worker import WrapServices

log = logging.getLogger(__name__)


class StopFlag:
    """A flag the driver sets on SIGTERM and rank 0 polls (a Ray actor, num_cpus=0)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


def init_ray(cfg: Config) -> bool:
    """Attach to `ray.address` / RAY_ADDRESS, or start an embedded local Ray.

    Returns True when this call connected (the caller then shuts it down), False when this
    process was already connected.
    """
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"log_to_driver": True}
    in_ray_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
    if not in_ray_job:  # a Ray job already carries its runtime_env
        env = forwarded_env()  # settings only, never credentials (pipeline/envvars.py)
        if env:
            kwargs["runtime_env"] = {"env_vars": env}
    ray.init(address=address, **kwargs)
    return True



def run_training(cfg: Config, resume: str | None = None, *,
                 wrap_services: WrapServices | None = None) -> dict[str, Any]:
    """Train `cfg` on Ray; return the JSON-able summary (run_id, run_name, steps,
    total_steps, loss, knn_top1, registered_model, model_version, mlflow_url, stopped,
    wall_s, first_step_s (the workers' loop start to the end of step 1), first_step_total_s
    (this call to the end of step 1: the startup goal's figure), epoch_samples: the samples
    trained on in the last epoch, all ranks). wrap_services(services, rank) wraps each
    worker's services (e.g. to inject faults in a test); it must be picklable."""
    called_at = time.time()  # startup/total_s counts from here to the end of the first step
    preflight(cfg)  # one-line errors before any Ray work or MLflow run (train/preflight.py)
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.ingest.placement import config_requests, require_resources
    from pipeline.shards.manifest import read_manifest
    from pipeline.storage import Storage
    from pipeline.train.worker import ray_entry

    t_start = time.monotonic()
    validate_training(cfg)  # e.g. data.train="" named here, not as ": no manifest.json"
    manifest = read_manifest(Storage(cfg.storage), cfg.data.train)  # fail before Ray starts
    run = open_run(cfg, run_name=default_run_name(cfg), resume=resume,
                   tags=provenance_tags(cfg.data.train, manifest.sha256, cfg.method.name),
                   before_continue=lambda r: _check_resume_on_driver(cfg, r, manifest.sha256))
    print(f"[mocopipe] MLflow run {run.run_id} ({'continued' if run.resumed else 'new'}): "
          f"{run.url}", flush=True)
    client = client_for(run.tracking_uri)
    if not run.resumed:  # the run page's "Datasets" panel: what this run trains on
        log_dataset_input(client, run.run_id, manifest, cfg.data.train)
    # Worker prints reach the driver once through Ray's log forwarding; Ray Train's print
    # patch would send every line a second time through its logger.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    driver_s = time.time() - called_at
    t0 = time.monotonic()
    connected = init_ray(cfg)
    ray_init_s = time.monotonic() - t0
    flag_name = f"mocopipe-stop-{run.run_id}-{uuid.uuid4().hex[:8]}"  # unique per driver
    flag = ray.remote(num_cpus=0)(StopFlag).options(name=flag_name).remote()
    stopping: list[bool] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        if stopping:  # a second SIGTERM: leave now
            raise SystemExit(128 + signum)
        stopping.append(True)
        print("[mocopipe] SIGTERM: asking the workers to checkpoint and stop", flush=True)
        flag.set.remote()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    resources = {"CPU": cfg.ray.cpus_per_worker, **cfg.ray.resources_per_worker}
    if cfg.ray.use_gpu:
        resources.setdefault("GPU", 1.0)
    trainer = TorchTrainer(
        ray_entry,
        train_loop_config={"cfg": cfg.to_dict(), "run": dataclasses.asdict(run),
                           "stop_actor": flag_name, "ray_init_s": ray_init_s,
                           "called_at": called_at, "driver_s": driver_s,
                           "fit_at": time.time(), "wrap_services": wrap_services},
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=run.run_name, storage_path=cfg.ray.storage_path or None,
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures)),
    )
    try:
        # a resource no node offers would keep the workers pending forever
        require_resources(config_requests(cfg.ingest.reader_resources,
                                          cfg.ray.resources_per_worker),
                          timeout_s=cfg.ingest.placement_timeout_s)
        result = trainer.fit()
    except BaseException:
        finish_run(client, run.run_id, "KILLED" if stopping else "FAILED")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        ray.kill(flag, no_restart=True)
        if connected:  # flush worker logs now, so the summary is the last thing printed
            ray.shutdown()
    summary = summarize(run, dict(result.metrics or {}))
    summary["wall_s"] = round(time.monotonic() - t_start, 1)
    finish_run(client, run.run_id, "KILLED" if summary["stopped"] else "FINISHED")
    return summary


def _check_resume_on_driver(cfg: Config, run: RunRef, manifest_sha: str) -> None:
    """Refuse (one line, before the run or Ray is touched) to continue a run whose newest
    checkpoint was written for other data or another config, unless
    `train.allow_changed_resume`."""
    from pipeline.train.checkpoint import CheckpointError, CheckpointManager
    from pipeline.train.services import MlflowArtifacts
    from pipeline.train.state import check_resume, run_fingerprint

    mgr = CheckpointManager(MlflowArtifacts(run.run_id, run.tracking_uri), every_steps=1,
                            keep=1)
    step = mgr.latest_step()
    if step is None:
        return
    try:
        saved = mgr.meta(step)
    except CheckpointError:
        return  # unreadable marker: the workers fall back past it
    check_resume(saved, run_fingerprint(cfg.flat(), manifest_sha), step=step,
                 allow=cfg.train.allow_changed_resume)


def summarize(run: RunRef, metrics: dict[str, Any]) -> dict[str, Any]:
    """The `--json` line: the run's identity plus rank 0's final report (`Result.metrics`)."""
    if "steps" not in metrics:
        raise RuntimeError(f"run {run.run_id}: the workers returned no summary "
                           f"(Result.metrics keys: {sorted(metrics)})")
    keys = ("steps", "total_steps", "loss", "knn_top1", "registered_model", "model_version",
            "first_step_s", "first_step_total_s", "resume_changed", "epoch_samples")
    return {"run_id": run.run_id, "run_name": run.run_name,
            **{k: metrics.get(k) for k in keys}, "stopped": bool(metrics.get("worker_stopped")),
            "mlflow_url": run_url(run.tracking_uri, run.experiment_id, run.run_id)}
