"""Ray job entrypoint: one night of incremental pretraining (see pipeline/orchestrate/nightly.py).

    python -m jobs.nightly --config jobs/configs/demo.toml [--date YYYY-MM-DD] [--set ...]

Trains on the shards that arrived since the last successful night (plus a replay share of
older ones), warm-started from the registered `champion`, and moves the alias only if the new
encoder's kNN accuracy is at least as good. Running it again for a finished date does nothing;
for a failed date it resumes that night's run. The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli import run_guarded
from pipeline.cli.common import add_set
from pipeline.config import ConfigError, load_config
from pipeline.orchestrate.nightly_plan import parse_date


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.nightly",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="TOML config (a path inside the project)")
    add_set(parser)
    parser.add_argument("--date", default=None, help="the night, YYYY-MM-DD (default: today, UTC)")
    args = parser.parse_args(argv)

    def run() -> int:
        cfg = load_config(args.config, args.overrides)
        try:
            date = parse_date(args.date)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

        from pipeline.orchestrate.nightly import run_nightly

        summary = run_nightly(cfg, date)
        print(json.dumps(summary), flush=True)
        return 0

    return run_guarded(run, "jobs.nightly")


if __name__ == "__main__":
    sys.exit(main())
