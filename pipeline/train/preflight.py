"""Fail before the cluster: the checks the driver runs before any Ray work or MLflow run.

`preflight(cfg)` runs at the top of `run_training` (and in `mocopipe submit`, on the
submitter). Each problem is one `PreflightError` line naming the config key or endpoint,
raised within seconds (short timeouts), so that nothing fails later on the workers after
`ray.max_failures` retries, hangs on an unplaceable actor, or leaves an MLflow run RUNNING:

    MLflow unreachable            -> mlflow.tracking_uri / MLFLOW_TRACKING_URI
    Ray unreachable               -> ray.address / RAY_ADDRESS
    missing training manifest     -> data.train
    unknown data.train_shards     -> data.train_shards
    batch > a rank's share        -> train.per_worker_batch
    missing eval manifest         -> data.eval_train / data.eval_test
    missing / incompatible warm start -> train.init_from
    more than the cluster places  -> ray.num_workers / ingest.readers_per_worker

Negative `train.seed` and other value errors are config validation (`pipeline.config`).
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from pipeline.config import Config

TIMEOUT_S = 5.0  # per network probe; the whole preflight stays well under 30 s
# Config fields of a source run that must match for its encoder to load into this model.
COMPATIBLE_PARAMS = ("model.arch", "model.width", "model.pool_grid", "data.channels")


class PreflightError(ValueError):
    """A run that cannot work; one line naming the config key or endpoint."""


# ----------------------------------------------------------------------------- endpoints


def check_mlflow(uri: str, timeout_s: float = TIMEOUT_S) -> None:
    """An http(s) tracking server answers at all (any HTTP status counts as reachable)."""
    if not uri.startswith(("http://", "https://")):
        return  # file: / sqlite: stores are local
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # it answered (e.g. 401 behind auth): reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PreflightError(f"mlflow.tracking_uri / MLFLOW_TRACKING_URI: MLflow at {uri} is "
                             f"unreachable ({reason})") from None


def check_ray_address(address: str, timeout_s: float = TIMEOUT_S) -> None:
    """A TCP connection to a Ray address (host:port, ray://, http(s)://) opens in time."""
    if not address or address == "auto" or address.startswith("local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise PreflightError(f"ray.address / RAY_ADDRESS: {address!r} is not HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise PreflightError(f"ray.address / RAY_ADDRESS: Ray at {address} is unreachable "
                             f"({exc.strerror or exc})") from None


# ----------------------------------------------------------------------------- data


def rank_steps(counts: Sequence[tuple[str, int]], cfg: Config) -> int:
    """Steps per epoch every rank runs (0 when the global batch exceeds the data)."""
    return sum(n for _, n in counts) // cfg.global_batch


def check_data(cfg: Config, storage: Any) -> None:
    """Training manifest, shard subset, batch vs a rank's share, eval manifests."""
    from pipeline.shards.manifest import ManifestError, read_manifest

    d = cfg.data
    try:
        manifest = read_manifest(storage, d.train)
    except ManifestError as exc:
        raise PreflightError(f"data.train: {exc}") from None
    counts = manifest.shard_counts()
    if d.train_shards:
        known = {k for k, _ in counts}
        unknown = [k for k in d.train_shards if k not in known]
        if unknown:
            raise PreflightError(f"data.train_shards: {unknown[:3]} not in the manifest of "
                                 f"{d.train} ({len(known)} shards, e.g. {sorted(known)[:2]})")
        counts = [c for c in counts if c[0] in set(d.train_shards)]
    if rank_steps(counts, cfg) < 1:
        total = sum(n for _, n in counts)
        raise PreflightError(
            f"train.per_worker_batch: {cfg.train.per_worker_batch} is larger than a rank's share "
            f"of {d.train} ({total} samples / ray.num_workers={cfg.ray.num_workers} = "
            f"{total // cfg.ray.num_workers}); lower it or use fewer workers")
    for key in ("eval_train", "eval_test"):
        uri = getattr(d, key)
        if uri:
            try:
                read_manifest(storage, uri)
            except ManifestError as exc:
                raise PreflightError(f"data.{key}: {exc}") from None


# ----------------------------------------------------------------------------- warm start


def check_init_from(cfg: Config, client: Any) -> None:
    """`train.init_from` exists in MLflow and was trained with a compatible model config."""
    uri = cfg.train.init_from
    if not uri:
        return
    from mlflow.exceptions import MlflowException

    try:
        if uri.startswith("models:/"):
            ref = uri[len("models:/"):]
            if "@" in ref:
                name, alias = ref.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = ref.partition("/")
                if number == "latest":
                    found = client.search_model_versions(f"name='{name}'")
                    if not found:
                        raise PreflightError(f"train.init_from: {uri}: model {name!r} has no "
                                             "versions in MLflow")
                    version = max(found, key=lambda v: int(v.version))
                elif not number.isdigit():
                    return  # a (deprecated) stage name: left to MLflow on the workers
                else:
                    version = client.get_model_version(name, number)
            run_id = version.run_id
        else:  # runs:/RUN_ID/PATH
            run_id, _, path = uri[len("runs:/"):].partition("/")
            if not client.list_artifacts(run_id, path or None):
                raise PreflightError(f"train.init_from: {uri} has no artifacts at {path!r}")
        params = client.get_run(run_id).data.params if run_id else {}
    except MlflowException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PreflightError(f"train.init_from: {uri} not found in MLflow ({first})") from None
    mine = cfg.flat()
    diff = [f"{k}={params[k]} (here {mine[k]})" for k in COMPATIBLE_PARAMS
            if k in params and str(params[k]) != str(mine[k])]
    if diff:
        raise PreflightError(f"train.init_from: {uri} was trained with {', '.join(diff)}; "
                             "its encoder does not fit this model")


# ----------------------------------------------------------------------------- placement


def demands(cfg: Config) -> list[tuple[str, str, str, float, int]]:
    """(what, resource, config key, amount per actor, actors) for every Ray resource asked."""
    r, i = cfg.ray, cfg.ingest
    workers, readers = r.num_workers, r.num_workers * i.readers_per_worker
    out = [("train worker", "CPU", "ray.cpus_per_worker", r.cpus_per_worker, workers)]
    if r.use_gpu and "GPU" not in r.resources_per_worker:
        out.append(("train worker", "GPU", "ray.use_gpu", 1.0, workers))
    out += [("train worker", k, f"ray.resources_per_worker.{k}", v, workers)
            for k, v in r.resources_per_worker.items()]
    out.append(("reader", "CPU", "ingest.reader_num_cpus", i.reader_num_cpus, readers))
    out += [("reader", k, f"ingest.reader_resources.{k}", v, readers)
            for k, v in i.reader_resources.items()]
    return out


def check_placement(cfg: Config, nodes: Sequence[Mapping[str, float]]) -> None:
    """Every worker and reader fits: each one on some node, and all of them on the cluster.

    nodes: the total resources of each alive node (`ray.nodes()[i]["Resources"]`).
    """
    total: dict[str, float] = {}
    for node in nodes:
        for k, v in node.items():
            total[k] = total.get(k, 0.0) + float(v)
    asked = [d for d in demands(cfg) if d[3] > 0]
    for what, res, key, amount, _count in asked:
        if not any(float(n.get(res, 0.0)) >= amount for n in nodes):
            raise PreflightError(f"{key}: no node of the Ray cluster offers {amount:g} {res} for "
                                 f"one {what} (cluster total: {total.get(res, 0.0):g} {res})")
    for res in sorted({d[1] for d in asked}):
        parts = [d for d in asked if d[1] == res]
        need = sum(d[3] * d[4] for d in parts)
        if need > total.get(res, 0.0) + 1e-9:
            detail = " + ".join(f"{d[4]} {d[0]}s x {d[3]:g}" for d in parts)
            raise PreflightError(
                f"ray.num_workers / ingest.readers_per_worker: {detail} = {need:g} {res}, but "
                f"the Ray cluster has {total.get(res, 0.0):g} {res}")


def cluster_nodes(address: str) -> list[dict[str, float]] | None:
    """Resources of the alive nodes of the cluster at `address` (None: embedded local Ray).

    Reuses this process's connection, else connects briefly and disconnects again.
    """
    import ray

    if ray.is_initialized():
        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not address:
        return None
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    finally:
        ray.shutdown()


def local_nodes() -> list[dict[str, float]]:
    """The one node an embedded Ray starts on this machine (all CPUs, the visible GPUs)."""
    import torch

    node = {"CPU": float(os.cpu_count() or 1)}
    if torch.cuda.is_available():
        node["GPU"] = float(torch.cuda.device_count())
    return [node]


# ----------------------------------------------------------------------------- all of it


def preflight(cfg: Config, *, ray_address: str | None = None, placement: bool = True) -> None:
    """Run every check (cheap and local first); raise the first PreflightError.

    ray_address: where the caller will attach (default: ray.address, then RAY_ADDRESS; a
    dashboard URL from `mocopipe submit` is only probed). placement=False skips the
    resource comparison (the job's own driver runs it again on the cluster).
    """
    from pipeline.config import validate_training
    from pipeline.storage import Storage
    from pipeline.tracking import client_for, resolve_tracking_uri

    validate_training(cfg)  # the config itself first (e.g. data.train = "")
    uri = resolve_tracking_uri(cfg.mlflow)
    check_mlflow(uri)
    address = ray_address or cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    check_ray_address(address)
    check_data(cfg, Storage(cfg.storage))
    check_init_from(cfg, client_for(uri))
    if placement and not address.startswith(("http://", "https://")):
        check_placement(cfg, cluster_nodes(address) or local_nodes())
