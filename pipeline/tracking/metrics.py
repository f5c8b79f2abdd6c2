"""Batched async metrics: `MetricLogger` (a background thread, order kept through outages)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from mlflow import MlflowClient


log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


# ----------------------------------------------------------------------------- metrics


def logged_steps(client: MlflowClient, run_id: str, keys: list[str]) -> dict[str, int]:
    """Highest step already logged per metric key (missing keys are absent).

    One request for the run's latest metrics first, then a history request only for the keys
    it holds: a new run (nothing logged yet) costs one request, not one per key."""
    out: dict[str, int] = {}
    logged = client.get_run(run_id).data.metrics
    for key in (k for k in keys if k in logged):
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
