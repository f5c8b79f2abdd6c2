"""MLflow runs: the tracking URI, create or continue a run by name/id, finish it; default names."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.tracking.tags import log_params, redact_map, set_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from pipeline.config import Config, MlflowConfig


RUN_NAME_TAG = "mocopipe.run_name"


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
