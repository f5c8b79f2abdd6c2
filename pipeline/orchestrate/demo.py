"""`mocopipe demo`: local stack -> Fashion-MNIST shards -> 2-worker MoCo run -> registered encoder.

Idempotent: a healthy stack in the state dir is reused, and shards already written (their
manifest exists) are not rewritten. The stack stays up afterwards so the printed MLflow URL
can be opened; `mocopipe down` stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import load_config
from pipeline.tracking import default_run_name

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "demo.toml"
# Several shards per split: 60000 / 5000 = 12 train shards, 10000 / 2000 = 5 test shards.
SPLITS = (("fashion-mnist:train", "train", 5000), ("fashion-mnist:test", "test", 2000))


def ensure_fmnist_shards(storage: Any, root: str = "s3://corpus/fmnist",
                         say: Callable[[str], None] = print) -> None:
    """Write the Fashion-MNIST train/test shards under `root` unless their manifests exist."""
    from pipeline.shards.writer import write_shards
    from pipeline.storage import join

    for src, split, per_shard in SPLITS:
        dest = join(root, split)
        if storage.exists(join(dest, "manifest.json")):
            say(f"shards: {dest} already written")
            continue
        t0 = time.monotonic()
        manifest = write_shards(src, dest, storage=storage, samples_per_shard=per_shard,
                                progress=False)
        say(f"shards: wrote {manifest.total_samples} samples in {len(manifest.shards)} shards "
            f"to {dest} ({time.monotonic() - t0:.0f}s)")


def run_demo(state_dir: str, overrides: list[str] | None = None,
             config_path: str | Path = DEMO_CONFIG,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Bring up the stack, write the shards, train the demo config; return the summary.

    Training runs as a `mocopipe train --json` child process with the stack's environment:
    starting the stack imports Ray in this process before the stack's Ray auth token is
    known, and Ray reads its auth settings once per process.
    """
    from pipeline.stack import local as stack
    from pipeline.storage import Storage

    t0 = time.monotonic()
    cfg = load_config(config_path, overrides)  # validate before starting anything
    stack.up(state_dir, log=say)
    env = {**os.environ, **stack.stack_env(state_dir), "PYTHONUNBUFFERED": "1"}
    os.environ.update(env)
    ensure_fmnist_shards(Storage(cfg.storage), say=say)
    run_name = default_run_name(cfg)
    sets = [*(overrides or []), f'ray.run_name="{run_name}"']
    cmd = [sys.executable, "-m", "pipeline.cli", "train", str(config_path), "--json",
           *[arg for item in sets for arg in ("--set", item)]]
    summary: dict[str, Any] | None = None
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                summary = json.loads(line)
            else:
                say(line.rstrip("\n"))
    if proc.returncode != 0 or summary is None:
        raise RuntimeError(f"demo: `mocopipe train` exited with code {proc.returncode}")
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    return summary
