"""Nightly incremental pretraining: one MLflow run per (config, date), champion promotion.

    mocopipe nightly CONFIG [--date D]      -> Ray job `nightly-<config>-<D>` (submit_nightly)
    python -m jobs.nightly --config CONFIG  -> run_nightly(cfg, D) inside that job:
      experiment "<config>-nightly", run named D (found again on a retry: resumes its checkpoint)
      -> shards newer than the last successful night + replay (pipeline.orchestrate.nightly_plan)
      -> warm start from the registry alias (nightly.warm_start) -> run_training
      -> kNN of the new version and of the champion on the labelled eval set
      -> alias moves only when the new one is at least as good; run + version tagged.

The shard selection, warm start and data cutoff of a night are written to its run before
training, and a retried night reads them back, so a resumed run trains on exactly the data
its checkpoint was planned for even if more shards arrived in between.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.orchestrate import nightly_plan as plan
from pipeline.config import Config, ConfigError, validate
from pipeline.orchestrate.nightly_plan import Decision, Selection

SELECTION_ARTIFACT = "nightly/selection.json"
ScoreFn = Callable[[str], float]


def model_name(cfg: Config) -> str:
    from pipeline.tracking import registered_model_name

    return registered_model_name(cfg)


# ----------------------------------------------------------------------------- Ray Jobs side


def plan_submission(name: str, date: str, existing: Mapping[str, str]) -> tuple[str, str]:
    """What `mocopipe nightly` does given the Ray jobs that exist for this night.

    existing: {submission id: status} of the night's attempts found on the cluster.
    Returns (action, submission id): "submit" a first attempt, "join" a pending/running
    one, "done" when an attempt succeeded (nothing is started), or "submit" the next
    attempt after a failed/stopped one (it resumes the night's MLflow run).
    """
    ids = [plan.submission_id(name, date)]
    while ids[-1] in existing:
        ids.append(plan.retry_submission_id(name, date, len(ids) + 1))
    if len(ids) == 1:
        return "submit", ids[0]
    last = ids[-2]
    status = str(existing[last])
    if status in ("PENDING", "RUNNING"):
        return "join", last
    if status == "SUCCEEDED":
        return "done", last
    return "submit", ids[-1]


def submit_nightly(client: Any, config: str, date: str, overrides: list[str], name: str, *,
                   forward_env: bool = True) -> tuple[str, str]:
    """Find this night's attempts on the cluster and submit / join / refuse (see above)."""
    from pipeline.orchestrate import submit as jobs

    existing: dict[str, str] = {}
    candidate = plan.submission_id(name, date)
    while (info := jobs.job_info(client, candidate)) is not None:
        existing[candidate] = str(info.status)
        candidate = plan.retry_submission_id(name, date, len(existing) + 1)
    action, sid = plan_submission(name, date, existing)
    if action == "submit":
        spec = jobs.JobSpec(module="jobs.nightly", config=config, overrides=overrides,
                            extra_args=["--date", date])
        jobs.submit(client, spec, submission_id=sid,
                    env_names=jobs.FORWARDED_ENV if forward_env else (),
                    metadata={"mocopipe.kind": "nightly", "mocopipe.schedule_date": date})
    return action, sid


# ----------------------------------------------------------------------------- inside the job


def night_config(cfg: Config, date: str, keys: list[str], init_from: str) -> Config:
    """The config a night trains with: its experiment, run name, shard subset, warm start."""
    night = copy.deepcopy(cfg)
    name = plan.experiment_name(cfg.train.name)
    night.mlflow.experiment = name
    night.ray.run_name = date
    base = cfg.ray.storage_path or os.path.expanduser("~/ray_results")
    # Ray Train run dirs are named by date: one folder per nightly config keeps them apart.
    night.ray.storage_path = f"{base.rstrip('/')}/{name}"
    night.data.train_shards = list(keys)
    night.train.init_from = init_from
    validate(night)
    return night


def last_good_night(client: Any, experiment_id: str, before: str) -> Any | None:
    """The newest night before `before` that trained (state done), or None."""
    runs = client.search_runs([experiment_id],
                              filter_string=f"tags.`{plan.TAG_STATE}` = 'done'",
                              max_results=1000)
    older = [r for r in runs if r.data.tags.get(plan.TAG_DATE, "") < before]
    return max(older, key=lambda r: r.data.tags[plan.TAG_DATE]) if older else None


def warm_start(client: Any, cfg: Config, previous: Any | None) -> str:
    """The model URI a night starts from ("" = random init), per `nightly.warm_start`."""
    from mlflow.exceptions import MlflowException

    mode, name = cfg.nightly.warm_start, model_name(cfg)
    if mode == "checkpoint" and previous is not None:
        version = previous.data.tags.get("mocopipe.registered_version")
        if version:
            return f"models:/{name}/{version}"
    if mode in ("champion", "checkpoint"):
        try:
            champion = client.get_model_version_by_alias(name, cfg.nightly.alias)
            return f"models:/{name}/{champion.version}"
        except MlflowException:
            return ""  # no registered model or no alias yet: the first night starts fresh
    return ""


def promote_if_better(client: Any, name: str, version: str, alias: str,
                      score: ScoreFn) -> Decision:
    """Score the new version and the alias' current version with `score(model_uri)`; move
    the alias to `version` only if it is at least as good. Tags the version either way."""
    from mlflow.exceptions import MlflowException

    try:
        champion = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        champion = None
    new_score = score(f"models:/{name}/{version}")
    if champion == version:
        champion_score: float | None = new_score
    else:
        champion_score = score(f"models:/{name}/{champion}") if champion else None
    decision = plan.decide(new_score, champion_score)
    if decision.promote:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, plan.TAG_DECISION, decision.tag)
    client.set_model_version_tag(name, version, "mocopipe.nightly_knn_top1", f"{new_score:.6f}")
    return decision


def knn_scorer(cfg: Config) -> ScoreFn:
    """score(model_uri) = kNN top-1 (THE recipe, `pipeline.eval.knn`) of that registered
    backbone on the labelled eval set. Weights come from the version's run
    `encoder.safetensors` (architecture from that run's params): the registry is never
    unpickled, and a version without the file is refused (`UnsafeModelError`)."""
    from pipeline.eval.knn import KnnScorer
    from pipeline.eval.registry import load_encoder
    from pipeline.storage import Storage
    from pipeline.tracking import resolve_tracking_uri

    scorer = KnnScorer.from_sections(Storage(cfg.storage), cfg.data, cfg.eval, cfg.augment)
    tracking_uri = resolve_tracking_uri(cfg.mlflow)

    def score(uri: str) -> float:
        return scorer(load_encoder(uri, tracking_uri=tracking_uri).backbone)

    return score


def _stored_selection(client: Any, run: Any) -> dict[str, Any] | None:
    """The selection an earlier attempt of this night wrote; None only when it is absent.

    "Absent" (the earlier attempt died before writing it) means plan the night afresh; a
    stored selection that cannot be listed, downloaded or parsed (an MLflow or storage blip,
    a damaged file) fails the night with TrackingError: re-planning then could resume a
    checkpoint planned for other data.
    """
    from pipeline.tracking import TrackingError

    run_id = run.info.run_id
    folder, _, _ = SELECTION_ARTIFACT.rpartition("/")
    try:
        listed = {a.path for a in client.list_artifacts(run_id, folder)}
    except Exception as exc:  # noqa: BLE001 - any failure here: we cannot tell "absent"
        raise TrackingError(f"nightly: cannot list the artifacts of run {run_id} to find "
                            f"{SELECTION_ARTIFACT} ({type(exc).__name__}: {exc}); the night "
                            "is not re-planned, run it again when MLflow is reachable") from exc
    if SELECTION_ARTIFACT not in listed:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="mocopipe-nightly-") as tmp, \
                open(client.download_artifacts(run_id, SELECTION_ARTIFACT, tmp)) as f:
            record = json.load(f)
        keys = ("new", "replay", "older", "cutoff", "init_from")
        if not isinstance(record, dict) or any(k not in record for k in keys):
            raise ValueError(f"expected a JSON object with {', '.join(keys)}")
    except Exception as exc:  # noqa: BLE001 - stored but unreadable: fail the night clearly
        raise TrackingError(f"nightly: run {run_id} has {SELECTION_ARTIFACT} but it cannot be "
                            f"read ({type(exc).__name__}: {exc}); the night is not "
                            "re-planned, fix or delete the artifact and run it again") from exc
    return record


def _choose(client: Any, cfg: Config, exp_id: str, date: str,
            run: Any | None) -> tuple[Selection, str, bool]:
    """(selection, warm-start URI, whether it was stored by an earlier attempt)."""
    from pipeline.shards.manifest import read_manifest
    from pipeline.storage import Storage

    stored = _stored_selection(client, run) if run is not None else None
    if stored is not None:
        sel = Selection(tuple(stored["new"]), tuple(stored["replay"]), stored["older"],
                        stored["cutoff"])
        return sel, stored["init_from"], True
    previous = last_good_night(client, exp_id, date)
    since = previous.data.tags.get(plan.TAG_CUTOFF) if previous else None
    manifest = read_manifest(Storage(cfg.storage), cfg.data.train)
    sel = plan.select_shards(manifest.shards, since=since, seed=f"{cfg.train.name}/{date}",
                             replay_fraction=cfg.nightly.replay_fraction)
    return sel, warm_start(client, cfg, previous), False


def _close(client: Any, run_id: str, state: str, decision: str, reason: str = "") -> None:
    from pipeline.tracking import finish_run, set_tags

    set_tags(client, run_id, {plan.TAG_STATE: state, plan.TAG_DECISION: decision,
                              "mocopipe.nightly_reason": reason or decision})
    finish_run(client, run_id, "FINISHED")


def run_nightly(cfg: Config, date: str, *, train: Callable[[Config], dict[str, Any]] | None = None,
                score: ScoreFn | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """One night of `cfg` (see the module docstring). Returns a JSON-able summary.

    `train` (default: Ray Train via `run_training`) and `score` (default: kNN on the
    labelled eval set) can be replaced, e.g. by a test that checks the bookkeeping only.
    """
    from pipeline.tracking import client_for, experiment_id_for, find_run, open_run
    from pipeline.tracking import resolve_tracking_uri

    if not cfg.data.eval_train:
        raise ConfigError("data.eval_train: nightly needs a labelled eval set (data.eval_train "
                          "and data.eval_test) to decide whether the new model is promoted")
    client = client_for(resolve_tracking_uri(cfg.mlflow))
    exp_name = plan.experiment_name(cfg.train.name)
    exp_id = experiment_id_for(client, exp_name)
    run = find_run(client, exp_id, date)
    out: dict[str, Any] = {"date": date, "experiment": exp_name}
    if run is not None and run.data.tags.get(plan.TAG_STATE) in plan.FINAL_STATES:
        state = run.data.tags[plan.TAG_STATE]
        log(f"[nightly] {exp_name} {date}: already {state} (run {run.info.run_id}); nothing to do")
        return {**out, "state": f"already-{state}", "run_id": run.info.run_id,
                "decision": run.data.tags.get(plan.TAG_DECISION)}

    sel, init_from, stored = _choose(client, cfg, exp_id, date, run)
    out.update(new_shards=len(sel.new), replay_shards=len(sel.replay),
               warm_start=init_from or "none")
    tags = {plan.TAG_DATE: date, plan.TAG_NEW: str(len(sel.new)),
            plan.TAG_REPLAY: str(len(sel.replay)), plan.TAG_WARM: init_from or "none",
            plan.TAG_CUTOFF: sel.cutoff or ""}
    if not sel.new:
        night = open_run(night_config(cfg, date, [], init_from), run_name=date, tags=tags)
        _close(client, night.run_id, "skipped", "no-new-data")
        log(f"[nightly] {date}: no shard newer than the last good night; skipped")
        return {**out, "state": "skipped", "run_id": night.run_id, "decision": "no-new-data"}

    ncfg = night_config(cfg, date, list(sel.keys), init_from)
    night = open_run(ncfg, run_name=date, tags={**tags, plan.TAG_STATE: "running"})
    if not stored:
        record = {"new": sel.new, "replay": sel.replay, "older": sel.older,
                  "cutoff": sel.cutoff, "init_from": init_from}
        client.log_text(night.run_id, json.dumps(record, indent=1), SELECTION_ARTIFACT)
    log(f"[nightly] {date}: {len(sel.new)} new + {len(sel.replay)} replayed shards, warm start "
        f"{init_from or 'none'}; run {night.run_id}" + (" (resumed)" if stored else ""))
    version = client.get_run(night.run_id).data.tags.get("mocopipe.registered_version")
    if version is None:  # not trained yet, or interrupted: train / resume the run
        if train is None:
            from pipeline.train.ray_trainer import run_training as train
        version = train(ncfg).get("model_version")
        if version is None:
            raise RuntimeError(f"nightly {date}: training of run {night.run_id} registered no "
                               "model version (was it stopped?); run the night again to resume")
    decision = promote_if_better(client, model_name(cfg), str(version), cfg.nightly.alias,
                                 score or knn_scorer(cfg))
    client.log_metric(night.run_id, "nightly_knn_top1", decision.new_score)
    if decision.champion_score is not None:
        client.log_metric(night.run_id, "champion_knn_top1", decision.champion_score)
    _close(client, night.run_id, "done", decision.tag, decision.reason)
    log(f"[nightly] {date}: version {version} kNN {decision.new_score:.4f} vs champion "
        f"{decision.champion_score}: {decision.tag} ({decision.reason})")
    return {**out, "state": "done", "run_id": night.run_id, "model_version": str(version),
            "decision": decision.tag, "reason": decision.reason,
            "knn_top1": decision.new_score, "champion_knn_top1": decision.champion_score}
