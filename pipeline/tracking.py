"""MLflow tracking: run create/resume, params and tags, batched async metrics, model registry.

One training run is one MLflow run. The driver opens it (`open_run`: a new run, or the
existing one with the same run name / id), logs the resolved config as params and the
provenance tags, and hands the run id to the train workers. Rank 0 then logs metrics
through `MetricLogger`, a background thread that batches them (`log_batch`, <= 1000 per
request) every `flush_every_s`, and keeps them (in order) while the server is unreachable,
delivering them when it is back. Checkpoints are run artifacts (`pipeline.train.checkpoint`);
the final encoder is logged and registered by `pipeline.train.export.log_encoder`.

Secrets never reach MLflow: they are not config fields, and `redact` replaces any value of
a secret environment variable (S3 keys, MLflow tokens) found in a param or tag.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.envvars import SECRET_ENV

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from pipeline.config import Config, MlflowConfig

log = logging.getLogger(__name__)

RUN_NAME_TAG = "mocopipe.run_name"
SECRET_ENV_VARS = SECRET_ENV  # the one list: pipeline/envvars.py
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000


class TrackingError(RuntimeError):
    """MLflow is not configured or a run cannot be found; the message says what to do."""


# ----------------------------------------------------------------------------- names


def registered_model_name(cfg: Config) -> str:
    """The registered model of a config: `mlflow.registered_model`, else "<train.name>-encoder"."""
    return cfg.mlflow.registered_model or f"{cfg.train.name}-encoder"


def default_run_name(cfg: Config) -> str:
    """The run name of a config: `ray.run_name`, else "<train.name>-<UTC timestamp>"."""
    return cfg.ray.run_name or f"{cfg.train.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


# ----------------------------------------------------------------------------- runs


def resolve_tracking_uri(cfg: MlflowConfig) -> str:
    """`mlflow.tracking_uri`, else MLFLOW_TRACKING_URI; raise TrackingError when neither is set."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise TrackingError(
            "mlflow.tracking_uri: not set and MLFLOW_TRACKING_URI is empty; start the local "
            "stack (`mocopipe up`, then `eval \"$(mocopipe env)\"`) or point it at a server")
    return uri.rstrip("/")


def client_for(tracking_uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


@dataclass(frozen=True)
class RunRef:
    """The MLflow run of one training run."""

    run_id: str
    experiment_id: str
    run_name: str
    tracking_uri: str
    resumed: bool

    @property
    def url(self) -> str:
        return run_url(self.tracking_uri, self.experiment_id, self.run_id)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run (for an http(s) tracking server)."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def experiment_id_for(client: MlflowClient, name: str) -> str:
    """Id of the experiment `name`, created if missing (artifacts go to the server's store)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_run(client: MlflowClient, experiment_id: str, run_name: str) -> Run | None:
    """The newest active run tagged `mocopipe.run_name = run_name`, or None."""
    escaped = run_name.replace("'", "\\'")
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{escaped}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def open_run(cfg: Config, *, run_name: str, resume: str | None = None,
             tags: Mapping[str, str] | None = None,
             before_continue: Callable[[RunRef], None] | None = None) -> RunRef:
    """Create the run of `run_name`, or continue it (same run name, or `resume` id/name).

    before_continue(run): called before an existing run is touched (it raises to refuse).

    A new run gets the config params and `tags`; a continued run is set back to RUNNING and
    gets the params it does not have yet (MLflow params are immutable: a changed value is
    kept as it was and reported in a warning).
    """
    uri = resolve_tracking_uri(cfg.mlflow)
    client = client_for(uri)
    exp_name = cfg.mlflow.experiment or cfg.train.name
    exp_id = experiment_id_for(client, exp_name)
    run: Run | None = None
    if resume:
        run = _run_by_id(client, resume) or find_run(client, exp_id, resume)
        if run is None:
            raise TrackingError(f"--resume {resume!r}: no MLflow run with that id, and no run "
                                f"named {resume!r} in experiment {exp_name!r}")
        refuse_if_live(run, resume)
        run_name = run.data.tags.get(RUN_NAME_TAG, run_name)
        exp_id = run.info.experiment_id
    else:
        run = find_run(client, exp_id, run_name)
    all_tags = {RUN_NAME_TAG: run_name, **(tags or {})}
    if run is None:
        run = client.create_run(exp_id, run_name=run_name, tags=redact_map(all_tags))
        resumed = False
    else:
        if before_continue is not None:
            before_continue(RunRef(run.info.run_id, exp_id, run_name, uri, True))
        client.update_run(run.info.run_id, status="RUNNING")
        resumed = True
    run_id = run.info.run_id
    log_params(client, run_id, cfg.flat(), existing=run.data.params if resumed else {})
    set_tags(client, run_id, all_tags)
    return RunRef(run_id, exp_id, run_name, uri, resumed)


LIVE_WITHIN_S = 120.0  # a RUNNING run with a metric this recent still has its driver


def refuse_if_live(run: Run, resume: str, now: float | None = None) -> None:
    """Raise TrackingError when `run` is RUNNING and logged a metric (or started) in the last
    `LIVE_WITHIN_S` seconds: its driver is still training (two drivers would interleave)."""
    if run.info.status != "RUNNING":
        return
    stamps = [m.timestamp for m in getattr(run.data, "_metric_objs", []) or []]
    stamps.append(run.info.start_time or 0)
    age = (now if now is not None else time.time()) - max(stamps) / 1000.0
    if age < LIVE_WITHIN_S:
        raise TrackingError(f"--resume {resume}: run {run.info.run_id} is RUNNING and was "
                            f"active {age:.0f} s ago; stop its driver first (or wait "
                            f"{LIVE_WITHIN_S:.0f} s if it died)")


def _run_by_id(client: MlflowClient, run_id: str) -> Run | None:
    if not run_id.isalnum() or len(run_id) != 32:
        return None
    try:
        return client.get_run(run_id)
    except Exception:  # noqa: BLE001 - not a run id: treat it as a run name
        return None


def finish_run(client: MlflowClient, run_id: str, status: str) -> None:
    """Set the terminal status: FINISHED, FAILED or KILLED."""
    client.set_terminated(run_id, status=status)


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


# ----------------------------------------------------------------------------- metrics


def logged_steps(client: MlflowClient, run_id: str, keys: list[str]) -> dict[str, int]:
    """Highest step already logged per metric key (missing keys are absent)."""
    out: dict[str, int] = {}
    for key in keys:
        history = client.get_metric_history(run_id, key)
        if history:
            out[key] = max(m.step for m in history)
    return out


class MetricLogger:
    """Batched, asynchronous metric logging that survives a server outage.

    `log(metrics, step)` only appends to an in-memory list. A daemon thread sends the list
    with `log_batch` every `flush_every_s` (or sooner when 1000 are waiting); on any error it
    keeps them, waits (backoff up to 30 s), and retries, so metrics arrive late but complete
    and in order. `skip_through` ({key: step}) drops values for steps a previous attempt of
    the run already logged (a resumed run replays steps after its last checkpoint).
    """

    def __init__(self, client: MlflowClient, run_id: str, *, flush_every_s: float = 5.0,
                 skip_through: Mapping[str, int] | None = None) -> None:
        if flush_every_s <= 0:
            raise ValueError(f"flush_every_s: {flush_every_s} must be > 0")
        self._client, self._run_id, self._every = client, run_id, flush_every_s
        self._skip = dict(skip_through or {})
        self._pending: list[Any] = []
        self._cond = threading.Condition()
        self._enqueued = self._delivered = 0
        self._flush_wanted = self._closing = False
        self.errors = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue `metrics` at `step` (non-blocking)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if step > self._skip.get(k, -1)]
        if not items:
            return
        with self._cond:
            self._pending.extend(items)
            self._enqueued += len(items)
            if len(self._pending) >= MAX_METRICS_PER_BATCH:
                self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued before this call is delivered; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._enqueued
            self._flush_wanted = True
            self._cond.notify_all()
            while self._delivered < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(timeout=left)
        return True

    def close(self, timeout: float = 300.0) -> bool:
        """Deliver what is queued (waiting at most `timeout` s) and stop the thread."""
        ok = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        if not ok:
            log.error("mlflow: %d metric values could not be delivered (%s)", self.pending,
                      self.last_error)
        return ok

    def _run(self) -> None:
        backoff = 1.0
        while True:
            with self._cond:
                if not (self._flush_wanted or self._closing
                        or len(self._pending) >= MAX_METRICS_PER_BATCH):
                    self._cond.wait(timeout=self._every)
                if self._closing and (not self._pending or self._delivered >= self._enqueued):
                    return
                batch = self._pending[:MAX_METRICS_PER_BATCH]
                if not batch:
                    self._flush_wanted = False
                    continue
            try:
                self._client.log_batch(self._run_id, metrics=batch)
            except Exception as exc:  # noqa: BLE001 - any failure: keep the batch, retry later
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("mlflow: metric delivery failed (%s); %d values buffered, retrying "
                            "in %.0f s", self.last_error, self.pending, backoff)
                with self._cond:
                    if self._closing:
                        return
                    self._cond.wait(timeout=backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            with self._cond:
                del self._pending[:len(batch)]
                self._delivered += len(batch)
                if not self._pending:
                    self._flush_wanted = False
                self._cond.notify_all()


# ----------------------------------------------------------------------------- lineage


def log_dataset_input(client: MlflowClient, run_id: str, manifest: Any, uri: str, *,
                      context: str = "training") -> None:
    """Log the run's dataset as an MLflow dataset input (the run page's "Datasets" panel).

    `manifest` is a `pipeline.shards.manifest.Manifest`, `uri` the name it was read under (a
    dataset folder or a manifest .json). Source = the manifest file's URI, digest = the
    manifest's sha256 (first 16 hex digits: MLflow's digest field is short), profile = the
    sample / shard / byte counts, so two runs on the same data show the same dataset.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from pipeline.shards.manifest import manifest_uri

    source = manifest_uri(uri)
    profile = {"samples": manifest.total_samples, "shards": len(manifest.shards),
               "bytes": manifest.total_bytes, "labelled": manifest.labelled,
               "manifest_sha256": manifest.sha256}
    dataset = Dataset(name=manifest.dataset or source, digest=manifest.sha256[:16],
                      source_type="s3" if source.startswith("s3://") else "local",
                      source=json.dumps({"uri": source}), profile=json.dumps(profile))
    client.log_inputs(run_id, datasets=[DatasetInput(
        dataset, tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)])])
