"""`mocopipe ...`: thin subcommands, one module per verb group.

Each handler parses, loads its config, calls the library and prints. Errors that are the
user's input are turned into one line on stderr by `main` (the one error handler), with the
exit codes documented in the README:

    0 success | 1 a check found problems / a job failed | 2 bad input (config, data,
    credentials, endpoints) | 130 interrupted | 143 a run stopped early (SIGTERM / stop)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.cli import bench, config, evaluate, finetune, jobs, shards, stack, train

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_STOPPED = 0, 1, 2, 130, 143


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mocopipe",
        description="Distributed MoCo v2 pretraining: S3 shards -> Ray readers -> Ray Train -> MLflow",
    )
    parser.add_argument("--version", action="version", version=f"mocopipe {_version()}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for add in (config.add_config, stack.add_stack, shards.add_shards, train.add_train,
                bench.add_bench, jobs.add_jobs, evaluate.add_evaluate, finetune.add_finetune):
        add(sub)
    return parser


def _version() -> str:
    """The installed distribution's version ("unknown" when run from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mocopipe")
    except PackageNotFoundError:
        return "unknown"


def known_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input (or an unreachable service), printed as one line."""
    from pipeline.config import ConfigError
    from pipeline.ingest.placement import ResourceUnavailableError
    from pipeline.orchestrate.cron import ScheduleError
    from pipeline.orchestrate.submit import JobsError
    from pipeline.shards.manifest import ManifestError
    from pipeline.stack.procs import StackError
    from pipeline.storage import StorageError
    from pipeline.tracking import TrackingError
    from pipeline.train.preflight import PreflightError

    return (ConfigError, ManifestError, StorageError, StackError, TrackingError, JobsError,
            ScheduleError, PreflightError, ResourceUnavailableError,
            FileNotFoundError, PermissionError)


def run_guarded(fn: Callable[[], int | None], prog: str = "mocopipe") -> int:
    """Run `fn` under THE error handler: known errors -> one line on stderr, exit 2;
    Ctrl-C -> 130. Used by `main` and by the `jobs/*.py` entrypoints alike."""
    try:
        rc = fn()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except known_errors() as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return int(rc or 0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
