"""`mocopipe ...`: thin subcommands. Parse, load config, call the library, print.

Each verb group lives in its own section below (`_add_<group>` builds its parsers, the
`_cmd_*` functions run it). Library errors (ConfigError, StorageError, ManifestError, ...)
are turned into one clear line on stderr and a non-zero exit in `main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from pipeline.config import ConfigError, load_config

Handler = Callable[[argparse.Namespace], int | None]


def _config_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    if required:
        p.add_argument("config", help="TOML config, e.g. jobs/configs/demo.toml")
    else:
        p.add_argument("config", nargs="?", default=None, help="TOML config")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")


# ----------------------------------------------------------------------------- config


def _add_config(sub: Any) -> None:
    p = sub.add_parser("config", help="inspect configs")
    s = p.add_subparsers(dest="config_cmd", required=True)
    show = s.add_parser("show", help="print the resolved, validated config tree")
    _config_args(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML-like text")
    show.set_defaults(func=_cmd_config_show)


def _cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    tree = cfg.to_dict()
    if args.json:
        print(json.dumps(tree, indent=2))
        return 0
    for section, values in tree.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}")
        print()
    return 0


# ----------------------------------------------------------------------------- stack (up/down/status/env)


def _add_stack(sub: Any) -> None:
    pass  # foundation: up, down, status, env


# ----------------------------------------------------------------------------- shards


def _add_shards(sub: Any) -> None:
    pass  # shards write | check | ls


# ----------------------------------------------------------------------------- train / demo


def _add_train(sub: Any) -> None:
    pass  # train, demo


# ----------------------------------------------------------------------------- bench


def _add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks that print ratios against a baseline measured in the same run")
    s = p.add_subparsers(dest="bench_cmd", required=True)
    _add_bench_ingest(s)
    _add_bench_train(s)


def _add_bench_ingest(s: Any) -> None:
    pass  # bench ingest (ingest engineer)


def _add_bench_train(s: Any) -> None:
    pass  # bench train (model engineer)


# ----------------------------------------------------------------------------- jobs (submit/jobs/nightly/schedule)


def _add_jobs(sub: Any) -> None:
    pass  # submit, jobs ls|logs|stop, nightly, schedule install|ls|remove (jobs engineer)


# ----------------------------------------------------------------------------- evaluate


def _add_evaluate(sub: Any) -> None:
    pass  # evaluate


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mocopipe",
        description="Distributed MoCo v2 pretraining: S3 shards -> Ray readers -> Ray Train -> MLflow",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for add in (_add_config, _add_stack, _add_shards, _add_train, _add_bench, _add_jobs,
                _add_evaluate):
        add(sub)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input, printed as one line (no traceback)."""
    errors: list[type[BaseException]] = [ConfigError, FileNotFoundError, PermissionError]
    for mod, name in (("pipeline.storage", "StorageError"),
                      ("pipeline.shards.manifest", "ManifestError"),
                      ("pipeline.stack", "StackError")):
        try:
            errors.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("mocopipe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user errors become one line
        if isinstance(exc, _known_errors()):
            print(f"mocopipe: error: {exc}", file=sys.stderr)
            return 2
        raise
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
