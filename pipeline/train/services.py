"""The training loop's outside services, as small interfaces with two implementations each.

    MetricSink    log(metrics, step), flush(timeout), close(), set_tags(tags)
                  MlflowSink (batched async MLflow logger) | MemorySink (a list, for tests)
    ArtifactRepo  put(local_file, dir), get(path, dst_dir), list(dir), delete(path)
                  MlflowArtifacts (the run's artifact repository) | LocalArtifacts (a folder)
    Evaluator     __call__(backbone) -> float (the kNN monitor, `pipeline.train.monitor`)

The loop never imports MLflow: the driver's worker entry builds the MLflow implementations,
a unit test the in-memory / local ones. Faults are injected by wrapping these interfaces.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import nn

    from pipeline.config import MlflowConfig
    from pipeline.tracking import RunRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One artifact listing row: `path` relative to the repository root."""

    path: str
    is_dir: bool


@runtime_checkable
class MetricSink(Protocol):
    """Where rank 0's metrics go."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: ...
    def close(self) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...


@runtime_checkable
class ArtifactRepo(Protocol):
    """Checkpoint files of one run; paths are POSIX, relative to the run's artifact root."""

    def put(self, local_file: str, artifact_dir: str) -> None: ...
    def get(self, path: str, dst_dir: str) -> str: ...
    def list(self, artifact_dir: str) -> Sequence[Entry]: ...
    def delete(self, path: str) -> None: ...


class Evaluator(Protocol):
    """Scores a backbone (e.g. kNN top-1 on labelled eval shards)."""

    def __call__(self, backbone: nn.Module) -> float: ...


# ----------------------------------------------------------------------------- metric sinks


class MemorySink:
    """Metrics kept in a list of (step, {key: value}); tags in a dict."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, float]]] = []
        self.tags: dict[str, Any] = {}
        self.closed = False

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.records.append((step, {k: float(v) for k, v in metrics.items()}))

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tags.update(tags)

    def steps(self, key: str) -> list[int]:
        """Steps at which `key` was logged, in logging order."""
        return [s for s, m in self.records if key in m]


class MlflowSink:
    """Rank 0's MLflow metrics: `MetricLogger` (async, batched, survives outages), MLflow's
    system metrics monitor, and no value for a step a previous attempt already logged."""

    def __init__(self, run: RunRef, cfg: MlflowConfig, keys: Sequence[str]) -> None:
        from pipeline.tracking import MetricLogger, client_for, logged_steps

        self.client, self.run_id = client_for(run.tracking_uri), run.run_id
        skip = logged_steps(self.client, run.run_id, list(keys))
        self.logger = MetricLogger(self.client, run.run_id, flush_every_s=cfg.flush_every_s,
                                   skip_through=skip)
        self.monitor = (start_system_metrics(run.run_id, run.tracking_uri)
                        if cfg.system_metrics else None)
        self._closed = False

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.logger.log(metrics, step)

    def flush(self, timeout: float | None = None) -> bool:
        return self.logger.flush(timeout)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from pipeline.tracking import set_tags

        set_tags(self.client, self.run_id, tags)

    def close(self, timeout: float = 300.0) -> None:
        if self._closed:
            return
        self._closed = True
        self.logger.close(timeout=timeout)
        if self.monitor is not None:
            try:
                self.monitor.finish()
            except Exception:  # noqa: BLE001 - monitoring never fails a run
                pass


# ----------------------------------------------------------------------------- artifact repos


class LocalArtifacts:
    """Artifacts under a local directory `root` (POSIX relative paths map to sub-folders)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)

    def _local(self, path: str) -> str:
        full = os.path.normpath(os.path.join(self.root, *path.split("/")))
        if full != self.root and not full.startswith(self.root + os.sep):
            raise ValueError(f"artifact path {path!r} leaves the repository {self.root}")
        return full

    def put(self, local_file: str, artifact_dir: str) -> None:
        dst = self._local(artifact_dir)
        os.makedirs(dst, exist_ok=True)
        shutil.copyfile(local_file, os.path.join(dst, os.path.basename(local_file)))

    def get(self, path: str, dst_dir: str) -> str:
        src = self._local(path)
        if not os.path.isfile(src):
            raise FileNotFoundError(f"artifact {path!r} not found under {self.root}")
        out = os.path.join(dst_dir, os.path.basename(src))
        shutil.copyfile(src, out)
        return out

    def list(self, artifact_dir: str) -> list[Entry]:
        base = self._local(artifact_dir)
        if not os.path.isdir(base):
            return []
        return [Entry(posixpath.join(artifact_dir, n), os.path.isdir(os.path.join(base, n)))
                for n in sorted(os.listdir(base))]

    def delete(self, path: str) -> None:
        target = self._local(path)
        if os.path.isdir(target):
            shutil.rmtree(target, ignore_errors=True)
        elif os.path.exists(target):
            os.remove(target)


class MlflowArtifacts:
    """The artifact repository of an MLflow run (`mlflow-artifacts:` proxied through the
    server, or `s3://` written directly by the client when that is the run's artifact root)."""

    def __init__(self, run_id: str, tracking_uri: str) -> None:
        from mlflow import MlflowClient
        from mlflow.store.artifact.artifact_repository_registry import (
            get_artifact_repository,
        )

        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
        self.run_id, self.tracking_uri = run_id, tracking_uri
        self.artifact_uri = run.info.artifact_uri
        self.repo = get_artifact_repository(self.artifact_uri, tracking_uri=tracking_uri)

    def put(self, local_file: str, artifact_dir: str) -> None:
        self.repo.log_artifact(local_file, artifact_dir)

    def get(self, path: str, dst_dir: str) -> str:
        return str(self.repo.download_artifacts(path, dst_dir))

    def list(self, artifact_dir: str) -> list[Entry]:
        return [Entry(i.path, bool(i.is_dir)) for i in self.repo.list_artifacts(artifact_dir) or []]

    def delete(self, path: str) -> None:
        self.repo.delete_artifacts(path)


def start_system_metrics(run_id: str, tracking_uri: str, node_id: str | None = None) -> Any:
    """Start MLflow's system metrics monitor (CPU, memory, disk, network, GPU) for the run.

    This is the monitor `mlflow.start_run(log_system_metrics=True)` starts, attached to an
    existing run without making it the process's active run; it continues the step count of
    an earlier attempt. Returns the monitor (call `.finish()`), or None if it cannot start.
    """
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=True, node_id=node_id,
                                       tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as exc:  # noqa: BLE001 - monitoring must never stop training
        log.warning("mlflow: system metrics disabled (%s)", exc)
        return None
