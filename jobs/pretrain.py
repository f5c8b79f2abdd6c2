"""Ray job entrypoint: one MoCo v2 pretraining run.

    python -m jobs.pretrain --config demo [--set train.max_steps=20]
                            [--resume RUN]

Submitted by `mocopipe submit CONFIG`; also runs as is on any machine that reaches the
cluster (RAY_ADDRESS) and the stores (AWS_* / MLFLOW_TRACKING_URI). The last line printed is
the run's JSON summary (run id, steps, loss, knn_top1, registered version, MLflow URL).
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.pretrain",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="TOML config: a path, or a shipped name (demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    parser.add_argument("--resume", default=None, help="MLflow run id or run name to continue")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)  # validated before anything starts

    from pipeline.train.ray_trainer import run_training

    summary = run_training(cfg, resume=args.resume)
    print(json.dumps(summary), flush=True)
    return 1 if summary.get("stopped") else 0


if __name__ == "__main__":
    sys.exit(main())
