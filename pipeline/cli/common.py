"""Arguments shared by every verb group (and the `jobs/*.py` entrypoints)."""

from __future__ import annotations

import argparse
import os


def add_set(p: argparse.ArgumentParser, *, what: str = "SECTION.KEY=VALUE") -> None:
    """`--set KEY=VALUE` (repeatable): the one override flag of every verb and job."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar=what,
                   help="override a config value (repeatable)")


def config_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """A positional CONFIG (a TOML path or a shipped config's name) plus `--set`."""
    if required:
        p.add_argument("config", help="TOML config: a path, or a shipped name (demo, imagenet_r50)")
    else:
        p.add_argument("config", nargs="?", default=None, help="TOML config")
    add_set(p)


def state_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=os.environ.get("MOCOPIPE_STATE_DIR", ".mocopipe"),
                   help="stack state directory (default: $MOCOPIPE_STATE_DIR or ./.mocopipe)")


def cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray dashboard URL, e.g. http://HEAD:8265 (default: ray.address, RAY_ADDRESS)")
    p.add_argument("--wait", action="store_true", help="stream the job's logs; exit with its status")
    p.add_argument("--no-forward-env", action="store_true",
                   help="forward none of this shell's settings (endpoints, region, tracking URI); "
                        "credentials are never forwarded unless `submit --forward-secrets`")
