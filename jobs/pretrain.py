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

from pipeline.cli import EXIT_STOPPED, run_guarded
from pipeline.cli.common import add_set
from pipeline.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.pretrain",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="TOML config: a path, or a shipped name (demo)")
    add_set(parser)
    parser.add_argument("--resume", default=None, help="MLflow run id or run name to continue")
    args = parser.parse_args(argv)

    def run() -> int:
        cfg = load_config(args.config, args.overrides)  # validated before anything starts

        from pipeline.train.ray_trainer import run_training

        summary = run_training(cfg, resume=args.resume)
        print(json.dumps(summary), flush=True)
        return EXIT_STOPPED if summary.get("stopped") else 0  # as `mocopipe train`

    return run_guarded(run, "jobs.pretrain")


if __name__ == "__main__":
    sys.exit(main())
