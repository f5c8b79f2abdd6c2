"""Params and tags: the resolved config as params, provenance tags, redaction of secrets, git sha."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.envvars import SECRET_ENV

if TYPE_CHECKING:
    from mlflow import MlflowClient


log = logging.getLogger(__name__)

SECRET_ENV_VARS = SECRET_ENV  # the one list: pipeline/envvars.py
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000


# ----------------------------------------------------------------------------- params and tags


def redact(text: str) -> str:
    """`text` with every value of a secret environment variable replaced by `***`."""
    for name in SECRET_ENV_VARS:
        secret = os.environ.get(name, "")
        if len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text


def redact_map(values: Mapping[str, Any]) -> dict[str, str]:
    return {k: redact(v if isinstance(v, str) else json.dumps(v)) for k, v in values.items()}


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any],
               existing: Mapping[str, str] | None = None) -> None:
    """Log `params` (values as JSON text, redacted, <= 6000 chars) in batches of 100.

    Keys already in `existing` are skipped; a different value is reported in a warning.
    """
    from mlflow.entities import Param

    existing = existing or {}
    todo: list[Param] = []
    for key, value in redact_map(params).items():
        value = value[:MAX_PARAM_CHARS]
        if key in existing:
            if existing[key] != value:
                log.warning("param %s: run has %r, config now says %r (MLflow params are "
                            "immutable; keeping the run's value)", key, existing[key], value)
            continue
        todo.append(Param(key, value))
    for i in range(0, len(todo), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=todo[i:i + MAX_PARAMS_PER_BATCH])


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, v) for k, v in redact_map(tags).items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=items[i:i + MAX_PARAMS_PER_BATCH])


def git_sha(root: str | os.PathLike[str] | None = None) -> str:
    """HEAD of the checkout holding this package ("<sha>-dirty" with uncommitted changes to
    tracked files), or "unknown"; MOCOPIPE_GIT_SHA wins (inside a Ray job there is no .git:
    the submitter sets it)."""
    if os.environ.get("MOCOPIPE_GIT_SHA"):
        return os.environ["MOCOPIPE_GIT_SHA"]
    here = str(root or os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    if not sha:  # an installed package, not a checkout: its version is the provenance
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"mocopipe-{version('mocopipe')}"
        except PackageNotFoundError:
            return "unknown"
    return f"{sha}-dirty" if dirty else sha


def ray_submission_id() -> str | None:
    """The Ray Jobs submission id when this driver runs as a Ray job, else None."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    if raw:
        try:
            sub = json.loads(raw).get("metadata", {}).get("job_submission_id")
            if sub:
                return str(sub)
        except (ValueError, AttributeError):
            pass
    return os.environ.get("RAY_JOB_SUBMISSION_ID") or None


def provenance_tags(dataset: str, manifest_sha: str, method: str = "moco_v2") -> dict[str, str]:
    """The run tags every training run carries (the SSL method among them)."""
    tags = {"mocopipe.dataset": dataset, "mocopipe.manifest_sha": manifest_sha,
            "mocopipe.git_sha": git_sha(), "mocopipe.method": method}
    sub = ray_submission_id()
    if sub:
        tags["ray.submission_id"] = sub
    return tags
