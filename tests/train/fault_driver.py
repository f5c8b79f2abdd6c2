"""`mocopipe train` with a fault injected through the workers' services (no hook in the
library): `python -m tests.train.fault_driver --kill RANK:STEP:MARKER CONFIG --set ...`.

Rank RANK's Ray Train `report` (called on every rank at log steps `train.report_every` apart:
the test sets it to the log cadence) exits the worker
process hard when it reports STEP, once (the MARKER file records that it fired). The last
line printed is the run's JSON summary, as with `mocopipe train --json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from pipeline.train.loop import Services


@dataclasses.dataclass(frozen=True)
class KillAt:
    """wrap_services: rank `rank` dies when it reports `step` (once per `marker`)."""

    rank: int
    step: int
    marker: str

    def __call__(self, services: Services, rank: int) -> Services:
        if rank != self.rank or services.report is None:
            return services
        inner: Callable[[dict[str, float]], None] = services.report

        def report(metrics: dict[str, float]) -> None:
            if int(metrics["step"]) == self.step and not os.path.exists(self.marker):
                with open(self.marker, "w", encoding="utf-8") as fh:
                    fh.write(f"rank {rank} killed at step {self.step}\n")
                os._exit(1)
            inner(metrics)

        return dataclasses.replace(services, report=report)


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_config
    from pipeline.cli import EXIT_STOPPED
    from pipeline.train.ray_trainer import run_training

    p = argparse.ArgumentParser()
    p.add_argument("--kill", required=True, metavar="RANK:STEP:MARKER")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rank, step, marker = args.kill.split(":", 2)
    summary: dict[str, Any] = run_training(load_config(args.config, args.overrides),
                                           wrap_services=KillAt(int(rank), int(step), marker))
    print(json.dumps(summary), flush=True)
    return EXIT_STOPPED if summary["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
