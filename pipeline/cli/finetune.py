"""`mocopipe finetune`: the label-efficiency curve of a registered encoder."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.config import ConfigError, load_config


def add_finetune(sub: Any) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune an encoder on a few labels vs random init",
        description="For each fraction of the labelled train set (class-balanced, seeded), "
        "fine-tune the whole encoder plus a linear head, and the same architecture from random "
        "init, and report test top-1: the label-efficiency curve. Weights come only from the "
        "run's encoder.safetensors. Logs one MLflow run (plots/label_efficiency.png) and tags "
        "the model version with finetune.*.")
    p.add_argument("model", help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID or a "
                   "run id")
    p.add_argument("--data", default=None, metavar="DATASET",
                   help="labelled shards with DATASET/train and DATASET/test")
    p.add_argument("--train-data", default=None, metavar="URI", help="override DATASET/train")
    p.add_argument("--test-data", default=None, metavar="URI", help="override DATASET/test")
    p.add_argument("--fractions", default="0.01,0.1,1.0", help="labelled fractions (default "
                   "%(default)s)")
    p.add_argument("--epochs", type=int, default=30, help="passes over each subset")
    p.add_argument("--min-steps", type=int, default=100, help="at least this many steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="SGD lr (cosine to 0)")
    p.add_argument("--max-train", type=int, default=0, help="cap on train images (0 = all)")
    p.add_argument("--max-test", type=int, default=0, help="cap on test images (0 = all)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers that share the "
                   "fine-tunes (default %(default)s; like training: this machine's Ray, or "
                   "RAY_ADDRESS / ray.address)")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="Ray CPU request (and torch threads) per worker (default "
                   "ray.cpus_per_worker)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the labelled subsets, the heads and the random init "
                        "(default: the run's train.seed)")
    p.add_argument("--local", action="store_true",
                   help="run in this process instead of on Ray Train workers")
    p.add_argument("--config", default=None, help="TOML config instead of the run's params")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--no-log", action="store_true", help="print only; log nothing to MLflow")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from pipeline.eval import evaluate as em
    from pipeline.eval.features import load_labelled
    from pipeline.eval.finetune import (FinetuneSettings, label_efficiency, log_finetune,
                                        parse_fractions, rows_as_dicts)
    from pipeline.storage import Storage
    from pipeline.tracking import resolve_tracking_uri

    fractions = parse_fractions(args.fractions)
    for key in ("epochs", "min_steps", "batch_size", "workers"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')}: {getattr(args, key)} must be >= 1")
    uri = resolve_tracking_uri(load_config(args.config).mlflow)
    # weights only from the run's encoder.safetensors (else UnsafeModelError: one line)
    loaded = em.load_encoder(args.model, config=args.config, overrides=args.overrides,
                             tracking_uri=uri)
    train_uri, test_uri = em.split_data(args.data, args.train_data, args.test_data, loaded.cfg)
    storage, d = Storage(loaded.cfg.storage), loaded.cfg.data
    x_tr, y_tr = load_labelled(storage, train_uri, channels=d.channels,
                               image_size=d.image_size, max_samples=args.max_train)
    x_te, y_te = load_labelled(storage, test_uri, channels=d.channels, image_size=d.image_size,
                               max_samples=args.max_test)
    seed = loaded.cfg.train.seed if args.seed is None else args.seed
    settings = FinetuneSettings(epochs=args.epochs, min_steps=args.min_steps,
                                batch_size=args.batch_size, lr=args.lr, seed=seed)
    train = (torch.from_numpy(x_tr), torch.from_numpy(y_tr))
    test = (torch.from_numpy(x_te), torch.from_numpy(y_te))
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    if args.local:
        rows = label_efficiency(
            loaded.backbone, em.random_init_like(loaded.cfg, seed), train,
            test, fractions=fractions, augment_cfg=loaded.cfg.augment, num_classes=num_classes,
            settings=settings)
    else:
        from pipeline.eval.finetune_ray import label_efficiency_on_ray

        rows = label_efficiency_on_ray(loaded.cfg, loaded.backbone.state_dict(), train, test,
                                       fractions=fractions, num_classes=num_classes,
                                       settings=settings, workers=args.workers,
                                       cpus_per_worker=args.cpus_per_worker)
    run = None if args.no_log else log_finetune(loaded, rows, settings, train_uri=train_uri,
                                                test_uri=test_uri, tracking_uri=uri)
    if args.json:
        print(json.dumps({"model": loaded.label, "source_run": loaded.run_id,
                          "finetune_run": run, "train": train_uri, "test": test_uri,
                          "rows": rows_as_dicts(rows)}, indent=2))
        return 0
    print(f"fine-tuning {loaded.label}: test top-1")
    print(f"{'fraction':>9} {'labels':>7} {'pretrained':>11} {'random init':>12}")
    for r in rows:
        print(f"{r.fraction:>9g} {r.n_labels:>7d} {r.pretrained_top1:>11.4f} "
              f"{r.random_top1:>12.4f}")
    if run:
        print(f"logged: run {run}")
    return 0
