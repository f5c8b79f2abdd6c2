"""One Ray Train worker: build the production services (MLflow metric sink and artifacts, kNN
monitor, encoder export, Ray Train reporting), the Loader and the Trainer, run the loop,
and hand the summary back to the driver through Ray Train's `Result`.

    services (MLflow, kNN, export, ray.train.report) + Loader + Trainer -> loop.train
    -> rank 0 reports the summary with a tiny checkpoint (`report_result`): `Result.metrics`
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from pipeline import dist
from pipeline.config import Config
from pipeline.tracking import RunRef, registered_model_name
from pipeline.train.loop import METRIC_KEYS, Services, TrainResult, train
from pipeline.train.services import MlflowArtifacts, MlflowSink
from pipeline.train.state import run_fingerprint

WrapServices = Callable[[Services, int], Services]


def select_shards(shards: list[tuple[str, int]], keys: list[str],
                  dataset: str) -> list[tuple[str, int]]:
    """The manifest's (key, samples) restricted to `keys` (data.train_shards; [] = all)."""
    if not keys:
        return shards
    want = set(keys)
    chosen = [s for s in shards if s[0] in want]
    missing = sorted(want - {k for k, _ in chosen})
    if missing:
        raise ValueError(f"data.train_shards: {missing[:5]} not in the manifest of {dataset}")
    return chosen


def _class_names(cfg: Config) -> list[str] | None:
    """Class names of the labelled eval set (from its manifest), for the embedding plot."""
    from pipeline.shards.manifest import read_manifest
    from pipeline.storage import Storage

    try:
        return list(read_manifest(Storage(cfg.storage), cfg.data.eval_test).classes) or None
    except Exception:  # noqa: BLE001 - only a legend
        return None


def mlflow_services(cfg: Config, run: RunRef, *, device: torch.device, manifest_sha: str,
                    should_stop: Callable[[], bool],
                    report: Callable[[dict[str, float]], None] | None) -> Services:
    """The production services of this rank (sink, evaluator and export on rank 0 only)."""
    from pipeline.train.monitor import KnnMonitor

    rank0 = dist.rank() == 0
    knn = (KnnMonitor(cfg.eval, cfg.data, cfg.augment, device, storage=cfg.storage)
           if rank0 and cfg.data.eval_train else None)

    def export(backbone: torch.nn.Module, *, knn_top1: float | None, views: Any,
               step: int) -> tuple[str, str]:
        from pipeline.train.export import export_run

        side = cfg.data.image_size
        return export_run(run, backbone, registered_model=registered_model_name(cfg),
                          knn_top1=knn_top1, views=views, final_step=step,
                          example_shape=(2, cfg.data.channels, side, side),
                          embeddings=knn.last_embeddings() if knn is not None else None,
                          class_names=_class_names(cfg))

    return Services(artifacts=MlflowArtifacts(run.run_id, run.tracking_uri),
                    sink=MlflowSink(run, cfg.mlflow, METRIC_KEYS) if rank0 else None,
                    evaluator=knn, export=export if rank0 else None, report=report,
                    should_stop=should_stop,
                    fingerprint=run_fingerprint(cfg.flat(), manifest_sha))


def run_worker(cfg: Config, run: RunRef, *, device: torch.device, use_ray: bool = True,
               should_stop: Callable[[], bool] = lambda: False,
               report: Callable[[dict[str, float]], None] | None = None,
               startup: dict[str, float] | None = None, origin: float | None = None,
               wrap_services: WrapServices | None = None) -> TrainResult:
    """Build everything for this rank and train (see the module docstring)."""
    from pipeline.ingest.loader import Loader, LoaderPlan
    from pipeline.shards.manifest import read_manifest
    from pipeline.storage import Storage
    from pipeline.train.trainer import build_trainer

    startup = dict(startup or {})
    t0 = time.perf_counter()
    dist.barrier()  # the first collective: the process group is up on every rank
    startup["startup/process_group_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    manifest = read_manifest(Storage(cfg.storage), cfg.data.train)
    shards = select_shards(manifest.shard_counts(), cfg.data.train_shards, cfg.data.train)
    startup["startup/manifest_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = LoaderPlan(shards, dist.rank(), dist.world_size(), cfg.train.per_worker_batch,
                      cfg.train.seed)
    loader = Loader(cfg.data, cfg.ingest, cfg.augment, plan, storage=cfg.storage,
                    use_ray=use_ray)
    startup["startup/readers_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    services = mlflow_services(cfg, run, device=device, manifest_sha=manifest.sha256,
                               should_stop=should_stop, report=report)
    if wrap_services is not None:
        services = wrap_services(services, dist.rank())
    try:
        trainer = build_trainer(cfg, steps_per_epoch=loader.steps_per_epoch, device=device,
                                rank=dist.rank())
        if cfg.train.init_from and not _has_checkpoint(services):
            from pipeline.train.warm_start import warm_start

            warm_start(trainer.model, cfg.train.init_from)  # a NEW run only
            if dist.rank() == 0:
                print(f"[mocopipe] warm start from {cfg.train.init_from}", flush=True)
        source: Any = loader
        if device.type == "cuda" and cfg.ingest.device_prefetch > 0:
            from pipeline.ingest.prefetch import PrefetchingSource

            # host -> GPU copies of the next batches overlap the step (`bench gpu`: 0.84x of
            # synthetic img/s with the copy inside the step on an H200)
            source = PrefetchingSource(loader, device, depth=cfg.ingest.device_prefetch)
        startup["startup/setup_s"] = time.perf_counter() - t0  # services, model, optimizer
        return train(trainer, source, services, train_cfg=cfg.train, ckpt_cfg=cfg.checkpoint,
                     eval_every_epochs=cfg.eval.every_epochs, global_batch=cfg.global_batch,
                     startup=startup, origin=origin)
    finally:
        loader.close()
        if services.sink is not None:
            services.sink.close()


def _has_checkpoint(services: Services) -> bool:
    from pipeline.train.checkpoint import ROOT

    return any(e.is_dir for e in services.artifacts.list(ROOT))


def summary_of(result: TrainResult) -> dict[str, Any]:
    """The worker's part of the driver's summary (JSON-able)."""
    return {"steps": result.step, "total_steps": result.total_steps, "loss": result.loss,
            "knn_top1": result.knn_top1, "registered_model": result.registered_model,
            "model_version": result.model_version, "first_step_s": result.first_step_s,
            "worker_stopped": result.stopped, "resume_changed": result.resume_changed,
            "epoch_samples": result.epoch_samples,
            "first_step_total_s": result.first_step_total_s}


def ray_entry(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: run this rank, then report the summary (rank 0
    attaches it as a small checkpoint, so it is the `Result.metrics` the driver gets)."""
    import ray
    import ray.train
    import ray.train.torch

    from pipeline.config import from_dict

    # driver_s: preflight, manifest and MLflow run on the driver; worker_group_s: from the
    # driver's fit() to this attempt's worker (a restarted attempt counts the earlier
    # attempts too); total_s (at the first step): from the run_training call
    startup = {"startup/driver_s": config["driver_s"],
               "startup/ray_init_s": config["ray_init_s"],
               "startup/worker_group_s": time.time() - config["fit_at"]}
    cfg, run = from_dict(config["cfg"]), RunRef(**config["run"])
    flag = None
    try:
        flag = ray.get_actor(config["stop_actor"])
    except ValueError:
        print(f"[mocopipe] stop flag {config['stop_actor']} not found; SIGTERM on the driver "
              f"will not checkpoint", flush=True)

    def should_stop() -> bool:
        try:
            return flag is not None and bool(ray.get(flag.is_set.remote(), timeout=10))
        except Exception:  # noqa: BLE001 - driver gone: Ray ends the workers anyway
            return False

    result = run_worker(cfg, run, device=ray.train.torch.get_device(), should_stop=should_stop,
                        report=lambda m: ray.train.report(m), startup=startup,
                        origin=config["called_at"], wrap_services=config.get("wrap_services"))
    report_result(summary_of(result))


def report_result(metrics: dict[str, Any]) -> None:
    """The last `ray.train.report` of a worker: every rank reports `metrics`; rank 0 attaches
    them as a small checkpoint, which is what makes them the driver's `Result.metrics`."""
    import ray.train

    if dist.rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="mocopipe-result-") as tmp:
        with open(os.path.join(tmp, "result.json"), "w", encoding="utf-8") as fh:
            json.dump(metrics, fh)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
