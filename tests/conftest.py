"""Shared fixtures: ONE local stack (SeaweedFS S3 + MLflow server + Ray head) per session.

`stack` starts the real servers on free loopback ports in a pytest temp state dir, sets
the client environment (AWS_*, MLFLOW_TRACKING_URI, RAY_ADDRESS, RAY_AUTH_*) in
`os.environ` while the session runs, restores it afterwards, and always stops the servers
by PID, even when start-up or a test fails. `storage` is a `pipeline.storage.Storage`
pointed at that stack. Tests keep to unique prefixes (`s3://corpus/<test>-<uuid>/`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.stack import local as stack_mod

# Session fixtures of a real tiny training run (`fmnist_tiny`, `reference_run`), shared by the
# train tests and the MLflow UI browser test.
pytest_plugins = ["tests.train.fixtures"]


@pytest.fixture(scope="session")
def stack() -> Iterator[stack_mod.StackInfo]:
    """A running local stack; yields its `StackInfo` (endpoints, credentials, `env`).

    The state dir is deleted at the end (set MOCOPIPE_KEEP_STACK=1 to keep its logs).
    """
    # Not under pytest's basetemp: pytest deletes all but its 3 newest basetemps, including
    # those of other sessions still running on the same machine.
    state_dir = Path(tempfile.mkdtemp(prefix="mocopipe-stack-"))
    saved: dict[str, str | None] = {}
    try:
        t0 = time.monotonic()
        stack_mod.up(state_dir, timeout_s=240)
        print(f"\n[stack] up in {time.monotonic() - t0:.1f}s at {state_dir}", file=sys.stderr)
        info = stack_mod.info(state_dir)
        saved = {key: os.environ.get(key) for key in info.env}
        os.environ.update(info.env)
        yield info
    finally:
        state = stack_mod.load_state(state_dir)
        try:
            _shutdown_ray_client()
        finally:
            stack_mod.down(state_dir, purge=os.environ.get("MOCOPIPE_KEEP_STACK") != "1")
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        survivors = [r for r in (state.refs() if state else []) if r.alive()]
        if survivors:  # `down` must leave no process of ours running
            raise RuntimeError(f"stack processes still alive after down: {survivors}")


def _shutdown_ray_client() -> None:
    """Disconnect this process from the stack's Ray head before the head goes away."""
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        ray.shutdown()


@pytest.fixture(scope="session")
def storage(stack: stack_mod.StackInfo) -> Any:
    """A `pipeline.storage.Storage` using the stack's endpoint and credentials (from env)."""
    from pipeline.storage import Storage  # imported lazily: optional for unit-only runs

    return Storage()
