"""The training loop of one rank: load -> for each batch: step, log, maybe evaluate, maybe
save -> export. Plain PyTorch; every outside service comes in through `Services`
(`pipeline.train.services`), so the loop runs in one process on in-memory batches with an
in-memory metric sink and a local artifact directory, or on a Ray Train worker with MLflow.

Every rank runs exactly `steps_per_epoch` steps per epoch (the epoch plan guarantees it) and
the same log / evaluate / save steps, so collectives never hang.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from pipeline import dist
from pipeline.config import CheckpointConfig, TrainConfig
from pipeline.train.checkpoint import CheckpointError, CheckpointManager, unpack
from pipeline.train.services import ArtifactRepo, Evaluator, MetricSink
from pipeline.train.state import (
    check_resume,
    checkpoint_files,
    gather_to_all,
    rng_state,
    set_rng_state,
)
from pipeline.train.trainer import StepStats, Trainer

METRIC_KEYS = ("loss", "acc1", "lr", "momentum", "samples_per_s", "step_time",
               "data_wait_frac", "queue_fill", "corrupt", "epoch", "nonfinite", "knn_top1",
               "epoch_samples")
Views = tuple[torch.Tensor, torch.Tensor]


class BatchSource(Protocol):
    """What the loop needs of a data loader (`pipeline.ingest.loader.Loader`)."""

    steps_per_epoch: int

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Services:
    """The loop's outside world. sink / evaluator / export: rank 0 only (None elsewhere).
    export(backbone, knn_top1, views, step, embeddings) -> (model name, version).
    report(metrics): every rank, at log steps at least `train.report_every` steps apart and at
    the last step (Ray Train's `report`, a barrier of all workers)."""

    artifacts: ArtifactRepo
    sink: MetricSink | None = None
    evaluator: Evaluator | None = None
    export: Callable[..., tuple[str, str]] | None = None
    report: Callable[[dict[str, float]], None] | None = None
    should_stop: Callable[[], bool] = lambda: False
    fingerprint: dict[str, Any] = field(default_factory=dict)  # state.run_fingerprint


@dataclass
class TrainResult:
    step: int
    total_steps: int
    loss: float | None
    knn_top1: float | None
    stopped: bool
    registered_model: str | None = None
    model_version: str | None = None
    first_step_s: float | None = None  # from the loop's start to the end of its first step
    resume_changed: list[str] = field(default_factory=list)
    epoch_samples: int | None = None  # samples the last epoch that ended trained on, all ranks
    first_step_total_s: float | None = None  # from `origin` (the run's start) to that step


class MetricWindow:
    """Sums over the steps since the last log line -> the logged metrics."""

    def __init__(self, global_batch: int, steps_per_epoch: int) -> None:
        self.global_batch, self.spe = global_batch, steps_per_epoch
        self.reset()

    def reset(self) -> None:
        self.n, self.loss, self.acc1, self.wait, self.t0 = 0, 0.0, 0.0, 0.0, time.perf_counter()

    def add(self, s: StepStats, wait: float) -> None:
        self.n, self.loss, self.acc1, self.wait = (self.n + 1, self.loss + s.loss,
                                                   self.acc1 + s.acc1, self.wait + wait)

    def metrics(self, s: StepStats, nonfinite: int) -> dict[str, float]:
        elapsed, n = max(time.perf_counter() - self.t0, 1e-9), max(self.n, 1)
        return {"loss": self.loss / n, "acc1": self.acc1 / n, "lr": s.lr,
                "momentum": s.momentum, "samples_per_s": self.global_batch * self.n / elapsed,
                "step_time": elapsed / n, "data_wait_frac": min(self.wait / elapsed, 1.0),
                "queue_fill": s.queue_fill, "corrupt": s.corrupt, "epoch": s.step / self.spe,
                "nonfinite": float(nonfinite)}


def batches(loader: BatchSource, start: int, total: int) -> Iterator[tuple[dict[str, Any], float]]:
    """(batch, seconds waited for it) from step `start` to `total`, across epochs."""
    spe, step = loader.steps_per_epoch, start
    while step < total:
        t_prev = time.perf_counter()
        for batch in loader.epoch(step // spe):
            yield batch, time.perf_counter() - t_prev
            step += 1
            if step >= total:
                return
            t_prev = time.perf_counter()


def train(trainer: Trainer, loader: BatchSource, services: Services, *, train_cfg: TrainConfig,
          ckpt_cfg: CheckpointConfig, eval_every_epochs: int, global_batch: int,
          startup: dict[str, float] | None = None, origin: float | None = None) -> TrainResult:
    """Train this rank from its latest checkpoint to `trainer.total_steps` (or a stop request).

    `startup`: the breakdown so far (logged once, with this attempt's first window); `origin`:
    the wall-clock time (``time.time()``) the run was started at, so ``startup/total_s`` is
    the whole way from there to the end of the first step."""
    rank, spe, sink = dist.rank(), loader.steps_per_epoch, services.sink
    ckpt = CheckpointManager(services.artifacts, every_steps=ckpt_cfg.every_steps,
                             keep=ckpt_cfg.keep, max_failures=ckpt_cfg.max_upload_failures,
                             before_commit=_flush_or_veto(sink, ckpt_cfg.flush_timeout_s))
    startup = dict(startup or {})
    t0 = time.perf_counter()
    changed = resume(trainer, loader, ckpt, services, allow=train_cfg.allow_changed_resume)
    startup["startup/resume_s"] = time.perf_counter() - t0
    total, win, t0 = trainer.total_steps, MetricWindow(global_batch, spe), time.perf_counter()
    first_step_total_s: float | None = None
    last_loss: float | None = None
    knn: float | None = None
    first_step_s: float | None = None
    views: Views | None = None
    evaluated_at = saved_at = -1
    epoch_samples: int | None = None
    stats: StepStats | None = None
    start = reported_at = trainer.steps_done
    for batch, wait in batches(loader, start, total):
        if first_step_s is None:
            startup["startup/first_batch_s"] = time.perf_counter() - t0
            views = (batch["view1"][:16].clone(), batch["view2"][:16].clone())
        poll = (rank == 0 and (trainer.steps_done + 1) % train_cfg.log_every == 0
                and services.should_stop())
        corrupt = float(sum(loader.state_dict().get("corrupt") or [0]))
        stats = trainer.step(batch["view1"], batch["view2"], stop=poll, corrupt=corrupt)
        if first_step_s is None:
            first_step_s = startup["startup/first_step_s"] = time.perf_counter() - t0
            if origin is not None:
                first_step_total_s = startup["startup/total_s"] = time.time() - origin
        last_loss = last_loss if stats.skipped else stats.loss
        win.add(stats, wait)
        step = stats.step
        if step % train_cfg.log_every == 0 or step == total or stats.stop:
            # Ray Train's report is a barrier of all workers: at most every train.report_every
            # steps (the same log steps on every rank, so all ranks call it together)
            report = step - reported_at >= train_cfg.report_every or step == total or stats.stop
            reported_at = step if report else reported_at
            _log(services, win.metrics(stats, trainer.nonfinite), step, total, startup, start,
                 report=report)
            startup = {}
            win.reset()
        if step % spe == 0:
            epoch_samples = count_epoch(loader, services, step, trainer.device)
        if step % spe == 0 and eval_every_epochs and (step // spe) % eval_every_epochs == 0 \
                and step < total:
            knn, evaluated_at = evaluate(trainer, services, step), step
        if ckpt.should_save(step) or (stats.stop and step < total):
            saved_at = save(trainer, loader, ckpt, services, step)
        if stats.stop:
            break
    step = trainer.steps_done
    if stats is not None and stats.stop and step < total:
        ckpt.close()
        return TrainResult(step, total, last_loss, knn, True, first_step_s=first_step_s,
                           resume_changed=changed, epoch_samples=epoch_samples,
                           first_step_total_s=first_step_total_s)
    knn = knn if evaluated_at == step else evaluate(trainer, services, step)
    if saved_at != step:
        save(trainer, loader, ckpt, services, step, last=True)
    ckpt.close()
    name = version = None
    if services.export is not None:
        name, version = services.export(copy.deepcopy(trainer.model.backbone).cpu(),
                                        knn_top1=knn, views=views, step=step)
    return TrainResult(step, total, last_loss, knn, False, name, version, first_step_s, changed,
                       epoch_samples, first_step_total_s)


def _log(services: Services, metrics: dict[str, float], step: int, total: int,
         startup: Mapping[str, float], start: int, *, report: bool = True) -> None:
    """Report to Ray Train (every rank, when `report`), log to the sink and print (rank 0).
    The startup breakdown is logged once per attempt, at the step the attempt started from."""
    if report and services.report is not None:
        services.report({**metrics, "step": float(step)})
    if services.sink is None:
        return
    if startup:
        services.sink.log(startup, start)
        print("[mocopipe] startup " + " ".join(f"{k.split('/')[1]} {v:.2f}"
                                               for k, v in startup.items()), flush=True)
    services.sink.log(metrics, step)
    print(f"[mocopipe] step {step}/{total} epoch {metrics['epoch']:.2f} loss "
          f"{metrics['loss']:.4f} acc1 {metrics['acc1']:.3f} lr {metrics['lr']:.4g} "
          f"{metrics['samples_per_s']:.0f} samples/s data_wait {metrics['data_wait_frac']:.2f}",
          flush=True)


def count_epoch(loader: BatchSource, services: Services, step: int,
                device: torch.device) -> int:
    """At an epoch's last step: the samples this epoch trained on, summed over ranks (each
    loader counts the samples it handed out this epoch that were not repeats, and keeps the
    count in its checkpointed state, so an epoch resumed midway still counts whole). Rank 0
    logs it as `epoch_samples` at `step`. Every rank calls this (one int64 all-reduce)."""
    mine = int(loader.state_dict().get("samples", 0))
    total = int(dist.all_reduce_sum(torch.tensor([mine], dtype=torch.int64,
                                                 device=device)).item())
    if services.sink is not None:
        services.sink.log({"epoch_samples": float(total)}, step)
        print(f"[mocopipe] step {step}: the epoch that ended here trained on {total} "
              f"samples", flush=True)
    return total


def _flush_or_veto(sink: MetricSink | None, timeout: float) -> Callable[[int], None] | None:
    """Before a checkpoint commits, the metrics up to its step must have arrived (so a resume
    never misses a logged step): flush, bounded by `checkpoint.flush_timeout_s`."""
    if sink is None:
        return None

    def flush(step: int) -> None:
        if not sink.flush(timeout):
            raise CheckpointError(f"checkpoint.flush_timeout_s: metrics up to step {step} not "
                                  f"delivered within {timeout:.0f} s; not committing")
    return flush


def resume(trainer: Trainer, loader: BatchSource, ckpt: CheckpointManager,
           services: Services, *, allow: bool) -> list[str]:
    """Load the newest loadable complete checkpoint (rank 0 picks it, falling back past a
    corrupt one; every rank loads it). Returns the config keys that changed since it."""
    rank, device = dist.rank(), trainer.device
    found = None
    if rank == 0:
        newest = ckpt.load_newest(names=("state.pt",), check=_readable)
        found = None if newest is None else newest[0]
    at = int(dist.broadcast(torch.tensor([-1 if found is None else found], device=device),
                            0).item())
    if at < 0:
        return []
    files = ckpt.load(at, names=("state.pt", "ranks.pt"))
    state, ranks = unpack(files["state.pt"]), unpack(files["ranks.pt"])
    if state["world_size"] != dist.world_size():
        raise ValueError(f"ray.num_workers: {dist.world_size()} workers cannot resume "
                         f"checkpoint step {at} written by {state['world_size']} workers")
    changed = check_resume(state.get("meta") or {}, services.fingerprint, step=at, allow=allow)
    trainer.load_state_dict(state, restore_schedule=not changed)
    loader.load_state_dict(ranks[rank]["loader"])
    set_rng_state(ranks[rank]["rng"], trainer.gen)
    if rank == 0:
        note = f" (changed: {', '.join(changed)})" if changed else ""
        print(f"[mocopipe] resumed from checkpoint step {at}{note}", flush=True)
        if changed and services.sink is not None:
            services.sink.set_tags({"mocopipe.resume_changed": ",".join(changed)})
    return changed


def _readable(files: dict[str, bytes]) -> None:
    try:
        unpack(files["state.pt"])
    except Exception as exc:
        raise CheckpointError(f"state.pt does not load ({type(exc).__name__})") from exc


def save(trainer: Trainer, loader: BatchSource, ckpt: CheckpointManager, services: Services,
         step: int, last: bool = False) -> int:
    """Checkpoint `step` (every rank gathers; rank 0 uploads). Non-finite weights are never
    committed (the previous checkpoint stays the newest). Returns `step`."""
    trainer.sync_buffers()
    ranks = gather_to_all({"loader": loader.state_dict(), "rng": rng_state(trainer.gen)},
                          trainer.device)
    if dist.rank() != 0:
        return step
    if not trainer.weights_finite():
        print(f"[mocopipe] step {step}: non-finite weights, checkpoint NOT saved", flush=True)
        if services.sink is not None:
            services.sink.set_tags({"mocopipe.alert": f"non-finite weights at step {step}"})
        return step
    files = checkpoint_files(trainer.state_dict(), ranks, services.fingerprint)
    ckpt.save(step, files, last=last, meta=services.fingerprint)
    return step


def evaluate(trainer: Trainer, services: Services, step: int) -> float | None:
    """Every rank averages BN statistics; rank 0 scores the backbone and logs `knn_top1`."""
    trainer.sync_buffers()
    if services.evaluator is None:
        return None
    acc = services.evaluator(trainer.model.backbone)
    if services.sink is not None:
        services.sink.log({"knn_top1": acc}, step)
    print(f"[mocopipe] step {step} knn_top1 {acc:.4f}", flush=True)
    return acc
