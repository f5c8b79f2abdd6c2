"""`mocopipe train`: the driver. Ray Train's TorchTrainer runs `loop.train` on N DDP workers.

    ray (embedded or attached) -> MLflow run (new, or continued by run name / --resume)
    -> TorchTrainer(ScalingConfig, RunConfig(name, storage_path, FailureConfig)).fit()
    -> summary read back from the MLflow run

Fault tolerance: when a worker dies, Ray Train restarts the worker group (up to
`ray.max_failures` times); the new workers find the run id in their config, load the latest
complete checkpoint from the run's artifacts and continue the same MLflow run. When the
driver itself died, running `mocopipe train` again with the same `ray.run_name` (or
`--resume RUN`) finds the MLflow run by its `mocopipe.run_name` tag and continues it.
SIGTERM on the driver sets a stop flag (a tiny named actor) that rank 0 polls every
`train.log_every` steps; all ranks then save a checkpoint and return.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
import uuid
from typing import Any

from pipeline.config import Config, from_dict
from pipeline.tracking import (RunRef, client_for, finish_run, open_run, provenance_tags,
                               run_url)

log = logging.getLogger(__name__)

# Forwarded to the workers when attaching to an existing cluster (never logged anywhere).
WORKER_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
              "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL",
              "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
FAULT_ENV = "MOCOPIPE_FAULT"  # test-only: "RANK:STEP:MARKER" (see loop._fault_hook)


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
        env = {k: os.environ[k] for k in WORKER_ENV if os.environ.get(k)}
        if env:
            kwargs["runtime_env"] = {"env_vars": env}
    ray.init(address=address, **kwargs)
    return True


def default_run_name(cfg: Config) -> str:
    return cfg.ray.run_name or f"{cfg.train.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _worker_entry(config: dict[str, Any]) -> None:
    """train_loop_per_worker: rebuild the config, find the device, run the loop."""
    import ray
    import ray.train.torch

    from pipeline.train.loop import train

    cfg = from_dict(config["cfg"])
    run = RunRef(**config["run"])
    flag = None
    try:
        flag = ray.get_actor(config["stop_actor"])
    except ValueError:
        log.warning("stop flag actor %s not found; SIGTERM on the driver will not checkpoint",
                    config["stop_actor"])

    def should_stop() -> bool:
        if flag is None:
            return False
        try:
            return bool(ray.get(flag.is_set.remote(), timeout=10))
        except Exception:  # noqa: BLE001 - driver gone: Ray ends the workers anyway
            return False

    train(cfg, run, device=ray.train.torch.get_device(), should_stop=should_stop,
          fault=config.get("fault"))


def run_training(cfg: Config, *, resume: str | None = None) -> dict[str, Any]:
    """Train `cfg` on Ray; return the JSON-able summary (see `summarize`)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.ingest.placement import config_requests, require_resources
    from pipeline.shards.manifest import read_manifest
    from pipeline.storage import Storage

    manifest = read_manifest(Storage(cfg.storage), cfg.data.train)  # fail before Ray starts
    run = open_run(cfg, run_name=default_run_name(cfg), resume=resume,
                   tags=provenance_tags(cfg.data.train, manifest.sha256))
    print(f"[mocopipe] MLflow run {run.run_id} ({'continued' if run.resumed else 'new'}): "
          f"{run.url}", flush=True)
    # Worker prints reach the driver once through Ray's log forwarding; Ray Train's print
    # patch would send every line a second time through its logger.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    connected = init_ray(cfg)
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
        _worker_entry,
        train_loop_config={"cfg": cfg.to_dict(), "run": dataclasses.asdict(run),
                           "stop_actor": flag_name,
                           "fault": os.environ.get(FAULT_ENV)},
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=run.run_name, storage_path=cfg.ray.storage_path or None,
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures)),
    )
    client = client_for(run.tracking_uri)
    try:
        # a resource no node offers would keep the workers pending forever
        require_resources(config_requests(cfg.ingest.reader_resources,
                                          cfg.ray.resources_per_worker),
                          timeout_s=cfg.ingest.placement_timeout_s)
        trainer.fit()
    except BaseException:
        finish_run(client, run.run_id, "KILLED" if stopping else "FAILED")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        ray.kill(flag, no_restart=True)
        if connected:  # flush worker logs now, so the summary is the last thing printed
            ray.shutdown()
    summary = summarize(run)
    summary["stopped"] = bool(stopping) and summary["steps"] < summary["total_steps"]
    finish_run(client, run.run_id, "KILLED" if summary["stopped"] else "FINISHED")
    return summary


def summarize(run: RunRef) -> dict[str, Any]:
    """The run's outcome, read back from MLflow: the `--json` line."""
    data = client_for(run.tracking_uri).get_run(run.run_id).data
    tags, metrics = data.tags, data.metrics
    return {
        "run_id": run.run_id, "run_name": run.run_name,
        "steps": int(tags.get("mocopipe.final_step", -1)),
        "total_steps": int(tags.get("mocopipe.total_steps", -1)),
        "loss": metrics.get("loss"), "knn_top1": metrics.get("knn_top1"),
        "registered_model": tags.get("mocopipe.registered_model"),
        "model_version": tags.get("mocopipe.registered_version"),
        "mlflow_url": run_url(run.tracking_uri, run.experiment_id, run.run_id),
    }
