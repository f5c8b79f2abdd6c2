"""`mocopipe config show`: the resolved, validated config tree."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.cli.common import config_args
from pipeline.config import load_config


def add_config(sub: Any) -> None:
    p = sub.add_parser("config", help="inspect configs")
    s = p.add_subparsers(dest="config_cmd", required=True)
    show = s.add_parser("show", help="print the resolved, validated config tree")
    config_args(show)
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
