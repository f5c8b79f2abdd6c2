"""The per-worker training loop: plain PyTorch under an (optional) process group.

    build model, optimizer, loader -> load the latest complete checkpoint
    -> while step < total: batch -> augment on device -> MoCo step (DDP) -> log / eval / save
    -> final kNN, checkpoint, encoder export (rank 0)

Every rank runs exactly `steps_per_epoch` steps per epoch (the epoch plan guarantees it),
so collectives never hang. One small all-reduce per step carries (loss, acc1, non-finite
flag, stop flag, corrupt count): all ranks skip a non-finite step together and stop together.
Ray appears only through the Loader's reader actors and the `should_stop` callback.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pipeline import dist
from pipeline.config import Config
from pipeline.train.optim import build_optimizer
from pipeline.train.warm_start import warm_start
from pipeline.train.lr_schedule import LrSchedule, momentum_at, set_lr, warmup_steps_for

log = logging.getLogger(__name__)

METRIC_KEYS = ("loss", "acc1", "lr", "momentum", "samples_per_s", "step_time",
               "data_wait_frac", "queue_fill", "corrupt", "epoch", "nonfinite", "knn_top1")


class NonFiniteLossError(RuntimeError):
    """More than `train.max_nonfinite` steps had a non-finite loss."""


@dataclass
class TrainResult:
    step: int
    total_steps: int
    loss: float | None
    knn_top1: float | None
    stopped: bool
    registered_model: str | None = None
    model_version: str | None = None



def amp_setup(device: torch.device, enabled: bool) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler): bf16 on CUDA that supports it, else fp16
    with loss scaling; nothing on CPU."""
    if not enabled or device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


class _Window:
    """Sums over the steps since the last log line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n, self.loss, self.acc1, self.wait, self.t0 = 0, 0.0, 0.0, 0.0, time.perf_counter()

    def add(self, loss: float, acc1: float, wait: float) -> None:
        self.n += 1
        self.loss += loss
        self.acc1 += acc1
        self.wait += wait


def _fault_hook(spec: str | None, rank: int, step: int) -> None:
    """Test-only fault injection: spec "RANK:STEP:MARKER" makes rank RANK exit hard before
    step STEP, once (the marker file records that it fired)."""
    if not spec:
        return
    r, s, marker = spec.split(":", 2)
    if rank == int(r) and step == int(s) and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(f"rank {rank} exited at step {step}\n")
        os._exit(1)


def _class_names(cfg: Config) -> list[str] | None:
    """Class names of the labelled eval set (from its manifest), for the embedding plot."""
    from pipeline.shards.manifest import read_manifest
    from pipeline.storage import Storage

    try:
        return list(read_manifest(Storage(cfg.storage), cfg.data.eval_test).classes) or None
    except Exception:  # noqa: BLE001 - only a legend
        return None


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



def train(cfg: Config, run: Any, *, device: torch.device,
          should_stop: Callable[[], bool] = lambda: False,
          fault: str | None = None, use_ray: bool = True) -> TrainResult:
    """Train this rank until `total_steps` (or a stop request); see the module docstring.

    run: the `pipeline.tracking.RunRef` of the MLflow run (metrics, checkpoints, model).
    use_ray: readers as Ray actors (False: in-process readers, for a single-process run).
    """
    from pipeline.ingest.loader import Loader
    from pipeline.model import build_method
    from pipeline.shards.manifest import read_manifest
    from pipeline.storage import Storage
    from pipeline.train.checkpoint import CheckpointManager, mlflow_repo, unpack
    from pipeline.train.monitor import KnnMonitor, RankZeroTracking
    from pipeline.train.state import checkpoint_files, gather_to_all, rng_state, set_rng_state

    rank, world = dist.rank(), dist.world_size()
    t, o = cfg.train, cfg.optim
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    manifest = read_manifest(Storage(cfg.storage), cfg.data.train)
    model = build_method(cfg.model, cfg.moco, in_channels=cfg.data.channels, seed=t.seed).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(model, o, lr=cfg.scaled_lr)
    amp_dtype, use_scaler = amp_setup(device, t.amp)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    shards = select_shards(manifest.shard_counts(), cfg.data.train_shards, cfg.data.train)
    loader = Loader(storage=cfg.storage, data=cfg.data, augment=cfg.augment, ingest=cfg.ingest,
                    dataset_uri=cfg.data.train, shards=shards, rank=rank,
                    world_size=world, per_rank_batch=t.per_worker_batch, seed=t.seed,
                    use_ray=use_ray)
    spe = loader.steps_per_epoch
    if spe < 1:
        raise ValueError(f"data.train: {sum(n for _, n in shards)} samples give 0 steps per epoch "
                         f"for a global batch of {cfg.global_batch}")
    total = t.epochs * spe if t.max_steps == 0 else min(t.epochs * spe, t.max_steps)
    lr_at = LrSchedule(cfg.scaled_lr, total, warmup_steps_for(o.warmup_epochs, spe, total),
                       o.schedule)
    from pipeline.augment import BatchAugment

    augment = BatchAugment(cfg.augment, cfg.data.channels)
    gen = torch.Generator(device=device).manual_seed(t.seed * 1_000_003 + rank)
    tracking = RankZeroTracking(run, cfg.mlflow, METRIC_KEYS) if rank == 0 else None
    ckpt = CheckpointManager(mlflow_repo(run.run_id, run.tracking_uri),
                             every_steps=cfg.checkpoint.every_steps, keep=cfg.checkpoint.keep,
                             before_commit=tracking.flush_through if tracking else None)
    knn = KnnMonitor(cfg, device) if rank == 0 and cfg.data.eval_train else None
    step, nonfinite, last_loss, knn_acc = 0, 0, None, None
    views: tuple[torch.Tensor, torch.Tensor] | None = None
    try:
        # ---- resume: rank 0 picks the checkpoint, every rank loads it
        found = ckpt.latest_step() if rank == 0 else None
        latest_t = torch.tensor([-1 if found is None else found], device=device)
        latest = int(dist.broadcast(latest_t, 0).item())
        if latest >= 0:
            files = ckpt.load(latest, names=("state.pt", "ranks.pt"))
            state, ranks = unpack(files["state.pt"]), unpack(files["ranks.pt"])
            if state["world_size"] != world:
                raise ValueError(f"ray.num_workers: {world} workers cannot resume checkpoint "
                                 f"step {latest} written by {state['world_size']} workers")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state["scaler"] is not None:
                scaler.load_state_dict(state["scaler"])
            loader.load_state_dict(ranks[rank]["loader"])
            set_rng_state(ranks[rank]["rng"], gen)
            step, nonfinite = state["step"], state["nonfinite"]
            if rank == 0:
                print(f"[mocopipe] resumed from checkpoint step {step}", flush=True)
        elif t.init_from:
            warm_start(model, t.init_from)  # a NEW run only: a resumed run has its checkpoint
            if rank == 0:
                print(f"[mocopipe] warm start from {t.init_from}", flush=True)
        ddp = dist.wrap_ddp(model)

        saved_at = [-1]  # the step of the last save (the same on every rank)

        def save(at: int, last: bool = False) -> None:
            saved_at[0] = at
            # BN running statistics are per rank (DDP without buffer broadcast): make them
            # equal first, so rank 0's model state is every rank's and a resume is exact.
            dist.average_bn_stats(model)
            ranks_now = gather_to_all({"loader": loader.state_dict(), "rng": rng_state(gen)},
                                      device)
            if rank == 0:
                files = checkpoint_files(model_state=model.state_dict(), optimizer=optimizer,
                                         scaler=scaler, schedule=lr_at.state_dict(), step=at,
                                         epoch=at // spe, nonfinite=nonfinite,
                                         rank_states=ranks_now)
                ckpt.save(at, files, last=last)

        def evaluate() -> float | None:
            dist.average_bn_stats(model)  # every rank: BN statistics = their rank mean
            if knn is None:
                return None
            acc = knn(model.backbone)
            tracking.log({"knn_top1": acc}, step)  # type: ignore[union-attr]
            print(f"[mocopipe] step {step} knn_top1 {acc:.4f}", flush=True)
            return acc

        stop, win, evaluated_at = False, _Window(), -1
        while step < total and not stop:
            epoch = step // spe
            t_prev = time.perf_counter()
            for batch in loader.epoch(epoch):
                wait = time.perf_counter() - t_prev
                _fault_hook(fault, rank, step)
                v1 = batch["view1"].to(device, non_blocking=True)
                v2 = batch["view2"].to(device, non_blocking=True)
                if views is None and rank == 0:
                    views = (batch["view1"][:16].clone(), batch["view2"][:16].clone())
                x1, x2 = augment(v1, gen), augment(v2, gen)
                if device.type == "cuda":
                    x1 = x1.contiguous(memory_format=torch.channels_last)
                    x2 = x2.contiguous(memory_format=torch.channels_last)
                set_lr(optimizer, lr_at(step))
                model.set_momentum(momentum_at(step, total, cfg.moco.momentum,
                                               cfg.moco.momentum_cosine))
                with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16,
                                    enabled=amp_dtype is not None):
                    loss, stats = ddp(x1, x2)
                optimizer.zero_grad(set_to_none=True)
                (scaler.scale(loss) if scaler is not None else loss).backward()
                poll = rank == 0 and (step + 1) % t.log_every == 0 and should_stop()
                corrupt = float(sum(loader.state_dict().get("corrupt") or [0]))
                vec = torch.stack([loss.detach().float(), stats["acc1"].float(),
                                   (~torch.isfinite(loss.detach())).float(),
                                   torch.tensor(float(poll), device=device),
                                   torch.tensor(corrupt, device=device)])
                # note: CPU-GPU sync point (5 scalars), so all ranks agree on skip / stop.
                g = (dist.all_reduce_mean(vec) * torch.tensor([1, 1, world, world, world],
                                                              device=device)).tolist()
                if g[2] > 0:
                    nonfinite += 1
                    optimizer.zero_grad(set_to_none=True)
                    if nonfinite > t.max_nonfinite:
                        raise NonFiniteLossError(
                            f"train.max_nonfinite: {nonfinite} steps had a non-finite loss "
                            f"(last at step {step}); lower optim.lr or enable optim.grad_clip")
                else:
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    if o.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    last_loss = g[0]
                step += 1
                stop = g[3] > 0
                win.add(g[0] if g[2] == 0 else 0.0, g[1], wait)
                if tracking is not None and (step % t.log_every == 0 or step == total or stop):
                    tracking.log_window(win, step=step, total=total, spe=spe,
                                        global_batch=cfg.global_batch,
                                        lr=optimizer.param_groups[0]["lr"],
                                        momentum=model.momentum, queue_fill=stats["queue_fill"],
                                        corrupt=g[4], nonfinite=nonfinite)
                    win.reset()
                elif step % t.log_every == 0:
                    win.reset()
                every = cfg.eval.every_epochs
                if step % spe == 0 and every and (step // spe) % every == 0 and step < total:
                    knn_acc, evaluated_at = evaluate(), step
                if ckpt.should_save(step) or (stop and step < total):
                    save(step)
                if stop or step >= total:
                    break
                t_prev = time.perf_counter()
        if stop and step < total:
            ckpt.close()
            if tracking is not None:
                tracking.set_progress(step, total)
            return TrainResult(step, total, last_loss, knn_acc, stopped=True)
        if evaluated_at != step:
            knn_acc = evaluate()
        if saved_at[0] != step:
            save(step, last=True)
        else:
            ckpt.close()  # already saved at this step: wait for its upload
        name = version = None
        if tracking is not None:
            tracking.close()
            tracking.set_progress(step, total)
            backbone = copy.deepcopy(model.backbone).cpu()
            from pipeline.train.export import export_run

            side = cfg.data.image_size
            # the final evaluate() above scored these weights: reuse its query features
            embeddings = knn.last_embeddings() if knn is not None else None
            name, version = export_run(run, backbone, registered_model=cfg.mlflow.registered_model
                                       or f"{t.name}-encoder", knn_top1=knn_acc, views=views,
                                       final_step=step,
                                       example_shape=(2, cfg.data.channels, side, side),
                                       embeddings=embeddings,
                                       class_names=_class_names(cfg))
        return TrainResult(step, total, last_loss, knn_acc, False, name, version)
    finally:
        loader.close()
        if tracking is not None:
            tracking.close(timeout=60.0)
