"""`mocopipe train` with gates at chosen log steps, for the soak test (no hook in the library):
`python -m tests.faults.soak_driver --gates DIR:STEP,STEP,... CONFIG --set ...`.

Rank 0's Ray Train `report` (every rank calls it at log steps `train.report_every` apart; the
test sets it to the log cadence) stops at each gate step the first time it gets there: it
writes ``DIR/gate-STEP.json`` ({"pid", "job_id", "step"}: this worker process and its Ray
job) and waits until the test creates ``DIR/go-STEP`` (or 600 s pass). While rank 0 waits,
the other ranks wait in the same report (a barrier), so the test applies a fault at a known
point of the run: before that step's checkpoint, evaluation and the next batch. A gate fires
once per run: a worker group restarted after a fault replays the step without stopping.
Waiting changes nothing the run computes. The last line printed is the run's JSON summary,
as with `mocopipe train --json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from pipeline.train.loop import Services


@dataclasses.dataclass(frozen=True)
class Gates:
    """wrap_services: rank 0 stops at each of `steps` once (see the module docstring)."""

    folder: str
    steps: tuple[int, ...]
    timeout_s: float = 600.0

    def __call__(self, services: Services, rank: int) -> Services:
        if rank != 0 or services.report is None:
            return services
        inner: Callable[[dict[str, float]], None] = services.report

        def report(metrics: dict[str, float]) -> None:
            step = int(metrics["step"])
            gate = os.path.join(self.folder, f"gate-{step}.json")
            if step in self.steps and not os.path.exists(gate):
                import ray

                info = {"pid": os.getpid(), "step": step,
                        "job_id": ray.get_runtime_context().get_job_id()}
                with open(gate + ".tmp", "w", encoding="utf-8") as fh:
                    json.dump(info, fh)
                os.replace(gate + ".tmp", gate)
                go, deadline = os.path.join(self.folder, f"go-{step}"), time.monotonic()
                while not os.path.exists(go) and time.monotonic() - deadline < self.timeout_s:
                    time.sleep(0.05)
            inner(metrics)

        return dataclasses.replace(services, report=report)


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import EXIT_STOPPED
    from pipeline.config import load_config
    from pipeline.train.ray_trainer import run_training

    p = argparse.ArgumentParser()
    p.add_argument("--gates", required=True, metavar="DIR:STEP,STEP,...")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    folder, steps = args.gates.rsplit(":", 1)
    gates = Gates(folder, tuple(int(s) for s in steps.split(",")))
    summary: dict[str, Any] = run_training(load_config(args.config, args.overrides),
                                           wrap_services=gates)
    print(json.dumps(summary), flush=True)
    return EXIT_STOPPED if summary["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
