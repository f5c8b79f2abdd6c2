"""`mocopipe train` (Ray Train, run from here) and `mocopipe demo`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.cli.common import config_args
from pipeline.config import load_config


def add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="run MoCo pretraining on Ray Train (this machine's Ray, "
                       "or RAY_ADDRESS / ray.address)")
    config_args(p)
    p.add_argument("--resume", metavar="RUN", default=None,
                   help="continue this MLflow run (run id or run name) from its last checkpoint")
    p.add_argument("--json", action="store_true", help="end with one JSON summary line")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("demo", help="local stack + Fashion-MNIST shards + a 2-worker demo run")
    p.add_argument("--state-dir", default=".mocopipe", help="stack state directory")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a demo config value")
    p.set_defaults(func=_cmd_demo)


def _print_train_summary(summary: dict[str, Any], as_json: bool) -> None:
    knn = summary.get("knn_top1")
    print(f"run {summary['run_name']} ({summary['run_id']}): {summary['steps']} steps, "
          f"final loss {summary['loss']}, knn_top1 {knn if knn is None else round(knn, 4)}")
    if summary.get("registered_model"):
        print(f"registered model: {summary['registered_model']} version "
              f"{summary['model_version']}")
    print(f"MLflow UI: {summary['mlflow_url']}")
    if summary.get("stopped"):
        print(f"stopped early; continue with --resume {summary['run_name']}")
    if as_json:
        print(json.dumps(summary), flush=True)


def _cmd_train(args: argparse.Namespace) -> int:
    from pipeline.cli import EXIT_STOPPED
    from pipeline.train.ray_trainer import run_training

    cfg = load_config(args.config, args.overrides)
    summary = run_training(cfg, resume=args.resume)  # known errors: one line (cli.main)
    _print_train_summary(summary, args.json)
    return EXIT_STOPPED if summary.get("stopped") else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.orchestrate.demo import run_demo

    summary = run_demo(args.state_dir, args.overrides, say=lambda m: print(m, flush=True))
    print(f"demo finished in {summary['wall_s']:.0f}s; stop the stack with "
          f"`mocopipe down --state-dir {args.state_dir}`")
    _print_train_summary(summary, True)
    return 0
