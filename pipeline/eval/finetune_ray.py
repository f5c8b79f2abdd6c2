"""`mocopipe finetune` on Ray Train workers, like training.

The label-efficiency curve is 2 x len(fractions) independent fine-tunes (pretrained and
random init per fraction), each seeded on its own (`finetune.finetune_top1`), so N workers
split them round-robin and gather the results: the rows are the same for any N. The driver
loads the encoder (weights only from `encoder.safetensors`) and the labelled images once and
hands them to the workers through the object store; the workers never touch MLflow.

    rows = label_efficiency_on_ray(loaded.cfg, loaded.backbone.state_dict(), train, test,
                                   fractions=[0.01, 0.1], num_classes=10, settings=s,
                                   workers=2)
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import torch

from pipeline.config import Config
from pipeline.eval.finetune import (EfficiencyRow, FinetuneSettings, balanced_subset,
                                    finetune_top1)

Images = tuple[torch.Tensor, torch.Tensor]  # uint8 (N, C, H, W), int64 (N,)
KINDS = ("pretrained", "random")


def jobs_of(fractions: list[float], rank: int, world: int) -> list[tuple[int, str]]:
    """This rank's share of the (fraction index, kind) fine-tunes, round-robin."""
    everything = [(i, kind) for i in range(len(fractions)) for kind in KINDS]
    return everything[rank::world]


def run_jobs(cfg: Config, pretrained_state: dict[str, torch.Tensor], train: Images,
             test: Images, *, fractions: list[float], num_classes: int,
             settings: FinetuneSettings, rank: int = 0, world: int = 1
             ) -> dict[tuple[int, str], tuple[int, float]]:
    """Run this rank's fine-tunes: {(fraction index, kind): (labels used, test top-1)}."""
    from pipeline.eval.evaluate import random_init_like

    pretrained = random_init_like(cfg, settings.seed)  # the architecture; weights next
    pretrained.load_state_dict(pretrained_state, strict=True)
    random_init = random_init_like(cfg, settings.seed)
    out: dict[tuple[int, str], tuple[int, float]] = {}
    for i, kind in jobs_of(fractions, rank, world):
        idx = torch.from_numpy(balanced_subset(train[1].numpy(), fractions[i], settings.seed))
        sub = (train[0][idx], train[1][idx])
        backbone = pretrained if kind == "pretrained" else random_init
        out[(i, kind)] = (int(idx.numel()), finetune_top1(
            backbone, sub, test, augment_cfg=cfg.augment, num_classes=num_classes,
            settings=settings))
    return out


def rows_from(parts: list[dict[tuple[int, str], tuple[int, float]]],
              fractions: list[float]) -> list[EfficiencyRow]:
    """Merge the ranks' results into one row per fraction."""
    merged = {k: v for part in parts for k, v in part.items()}
    missing = [(fractions[i], kind) for i in range(len(fractions)) for kind in KINDS
               if (i, kind) not in merged]
    if missing:
        raise RuntimeError(f"finetune: no result for {missing} from the Ray workers")
    return [EfficiencyRow(f, merged[(i, "pretrained")][0], merged[(i, "pretrained")][1],
                          merged[(i, "random")][1]) for i, f in enumerate(fractions)]


def _entry(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: this rank's fine-tunes, gathered on every rank;
    rank 0's report carries the rows (`Result.metrics["rows"]`)."""
    import ray

    from pipeline import dist
    from pipeline.config import from_dict
    from pipeline.train.worker import report_result

    torch.set_num_threads(max(1, int(config["threads"])))
    cfg = from_dict(config["cfg"])
    blob = ray.get(config["data"])
    rank, world = dist.rank(), dist.world_size()
    mine_jobs = jobs_of(config["fractions"], rank, world)
    print(f"[mocopipe] finetune: rank {rank}/{world} runs {len(mine_jobs)} fine-tunes "
          f"({torch.get_num_threads()} torch threads)", flush=True)
    mine = run_jobs(cfg, blob["state"], blob["train"], blob["test"],
                    fractions=config["fractions"], num_classes=config["num_classes"],
                    settings=FinetuneSettings(**config["settings"]), rank=rank, world=world)
    parts = dist.all_gather_object(mine)
    rows = rows_from(parts, config["fractions"])  # type: ignore[arg-type]
    report_result({"rows": [dataclasses.asdict(r) for r in rows]})


def label_efficiency_on_ray(cfg: Config, pretrained_state: dict[str, torch.Tensor],
                            train: Images, test: Images, *, fractions: list[float],
                            num_classes: int, settings: FinetuneSettings, workers: int = 1,
                            cpus_per_worker: float | None = None) -> list[EfficiencyRow]:
    """The rows of `finetune.label_efficiency`, computed by `workers` Ray Train workers
    (`cpus_per_worker`: Ray's CPU request, default `ray.cpus_per_worker`; each worker uses
    that many torch threads, at least one)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.train.ray_trainer import init_ray

    if workers < 1:
        raise ValueError(f"finetune: workers={workers} must be >= 1")
    cpus = cfg.ray.cpus_per_worker if cpus_per_worker is None else cpus_per_worker
    connected = init_ray(cfg)
    try:
        data = ray.put({"state": {k: v.detach().cpu() for k, v in pretrained_state.items()},
                        "train": train, "test": test})
        trainer = TorchTrainer(
            _entry,
            train_loop_config={"cfg": cfg.to_dict(), "data": data, "fractions": list(fractions),
                               "num_classes": num_classes,
                               "settings": dataclasses.asdict(settings),
                               "threads": max(1, round(cpus))},
            scaling_config=ScalingConfig(num_workers=workers,
                                         resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(name=f"finetune-{uuid.uuid4().hex[:8]}",
                                 storage_path=cfg.ray.storage_path or None))
        result = trainer.fit()
    finally:
        if connected:
            ray.shutdown()
    return [EfficiencyRow(**r) for r in (result.metrics or {})["rows"]]
