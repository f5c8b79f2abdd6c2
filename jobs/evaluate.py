"""Ray job entrypoint: evaluate an encoder (kNN + linear probe vs random-init and raw pixels).

    python -m jobs.evaluate --config jobs/configs/demo.toml [--model models:/demo-encoder@champion]

`--model` defaults to the config's registered model at its `nightly.alias` (the champion);
the labelled sets are the config's data.eval_train / data.eval_test. The work is done by
`mocopipe evaluate` (pipeline/eval/evaluate.py); results go to a new MLflow run and to the
model version's tags, and the last thing printed is their JSON.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import run_guarded
from pipeline.cli.common import add_set
from pipeline.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="TOML config (a path inside the project)")
    add_set(parser)
    parser.add_argument("--model", default=None,
                        help="models:/NAME/VERSION, models:/NAME@ALIAS or a run id "
                             "(default: models:/<registered model>@<nightly.alias>)")
    args = parser.parse_args(argv)
    return run_guarded(lambda: _run(args), "jobs.evaluate")


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if not cfg.data.eval_train:
        raise ConfigError("data.eval_train: evaluation needs labelled shards "
                          "(data.eval_train and data.eval_test)")
    from pipeline.tracking import registered_model_name

    model = args.model or f"models:/{registered_model_name(cfg)}@{cfg.nightly.alias}"

    from pipeline.cli import main as cli

    sets = [a for item in args.overrides for a in ("--set", item)]
    return cli(["evaluate", model, "--config", args.config, *sets, "--train-data",
                cfg.data.eval_train, "--test-data", cfg.data.eval_test, "--json"])


if __name__ == "__main__":
    sys.exit(main())
