"""tracking.py without a server: async metric delivery across an outage, redaction, params."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pipeline.tracking import (MetricLogger, TrackingError, log_params, logged_steps, redact,
                               redact_map, resolve_tracking_uri, run_url)

pytestmark = pytest.mark.unit


class FlakyClient:
    """Records log_batch calls; raises while `down` is set (a server outage)."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.calls = 0
        self.metrics: list[tuple[str, float, int]] = []
        self.params: list[tuple[str, str]] = []

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> None:
        self.calls += 1
        if self.down.is_set():
            raise ConnectionError("connection refused")
        assert len(metrics) <= 1000 and len(params) <= 100
        self.metrics += [(m.key, m.value, m.step) for m in metrics]
        self.params += [(p.key, p.value) for p in params]


def test_metrics_survive_an_outage_in_order() -> None:
    client = FlakyClient()
    logger = MetricLogger(client, "r1", flush_every_s=0.05)  # type: ignore[arg-type]
    logger.log({"loss": 1.0}, step=1)
    assert logger.flush(timeout=10)
    client.down.set()
    for step in range(2, 1502):  # > one batch worth while the server is down
        logger.log({"loss": float(step)}, step=step)
    assert not logger.flush(timeout=0.5)  # cannot deliver yet
    assert logger.errors >= 1 and "connection refused" in (logger.last_error or "")
    client.down.clear()
    assert logger.close(timeout=30)
    steps = [s for _, _, s in client.metrics]
    assert steps == list(range(1, 1502))  # nothing lost, nothing duplicated, in order


def test_skip_through_drops_already_logged_steps() -> None:
    client = FlakyClient()
    logger = MetricLogger(client, "r1", flush_every_s=0.05,  # type: ignore[arg-type]
                          skip_through={"loss": 20, "knn_top1": 10})
    for step in (10, 20, 30):
        logger.log({"loss": 0.5, "knn_top1": 0.1}, step=step)
    assert logger.close(timeout=10)
    assert sorted((k, s) for k, _, s in client.metrics) == [
        ("knn_top1", 20), ("knn_top1", 30), ("loss", 30)]


class HistoryClient:
    """A run whose metrics are `history` ({key: [steps]}); counts the requests."""

    def __init__(self, history: dict[str, list[int]]) -> None:
        self.history, self.requests = history, []

    def get_run(self, run_id: str) -> Any:
        self.requests.append("get_run")
        latest = {k: 0.5 for k, steps in self.history.items() if steps}

        class Run:
            class data:  # noqa: N801 - the shape of mlflow.entities.Run
                metrics = latest
        return Run

    def get_metric_history(self, run_id: str, key: str) -> list[Any]:
        self.requests.append(key)
        return [type("M", (), {"step": s})() for s in self.history.get(key, [])]


def test_logged_steps_asks_history_only_for_keys_the_run_has() -> None:
    keys = ["loss", "acc1", "lr", "knn_top1"]
    fresh = HistoryClient({})
    assert logged_steps(fresh, "r", keys) == {}  # type: ignore[arg-type]
    assert fresh.requests == ["get_run"]  # a new run: one request, not one per key
    resumed = HistoryClient({"loss": [10, 30, 20], "knn_top1": [12], "other": [5]})
    assert logged_steps(resumed, "r", keys) == {"loss": 30, "knn_top1": 12}  # type: ignore[arg-type]
    assert resumed.requests == ["get_run", "loss", "knn_top1"]


def test_flush_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="flush_every_s"):
        MetricLogger(FlakyClient(), "r", flush_every_s=0)  # type: ignore[arg-type]


def test_redact_replaces_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    assert redact("http://x?key=s3cr3t-value") == "http://x?key=***"
    assert redact_map({"a": ["s3cr3t-value"], "b": 3}) == {"a": '["***"]', "b": "3"}


def test_log_params_batches_and_skips_existing(caplog: pytest.LogCaptureFixture) -> None:
    client = FlakyClient()
    params = {f"p{i}": i for i in range(250)}
    log_params(client, "r", params, existing={"p0": "0", "p1": "999"})  # type: ignore[arg-type]
    assert len(client.params) == 248 and client.calls == 3
    assert "p1" in caplog.text and "immutable" in caplog.text


def test_tracking_uri_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import MlflowConfig

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackingError, match="mlflow.tracking_uri"):
        resolve_tracking_uri(MlflowConfig())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000/")
    assert resolve_tracking_uri(MlflowConfig()) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri(MlflowConfig(tracking_uri="http://h:1")) == "http://h:1"
    assert run_url("http://h:1", "3", "abc") == "http://h:1/#/experiments/3/runs/abc"


def _run(status: str, start_s: float, metric_s: list[float]) -> Any:
    from mlflow.entities import Metric, Run, RunData, RunInfo

    info = RunInfo(run_id="r" * 32, experiment_id="1", user_id="u", status=status,
                   start_time=int(start_s * 1000), end_time=None, lifecycle_stage="active",
                   artifact_uri="mlflow-artifacts:/x")
    data = RunData(metrics=[Metric("loss", 1.0, int(t * 1000), i)
                            for i, t in enumerate(metric_s)])
    return Run(info, data)


@pytest.mark.parametrize(("status", "start", "metrics", "refused"), [
    ("RUNNING", 0.0, [990.0], True),       # a metric 10 s ago: its driver is alive
    ("RUNNING", 990.0, [], True),          # just started, nothing logged yet
    ("RUNNING", 0.0, [100.0, 500.0], False),  # silent for 500 s: the driver died
    ("FINISHED", 0.0, [999.0], False),
    ("KILLED", 0.0, [999.0], False),
])
def test_resume_of_a_live_run_is_refused(status: str, start: float, metrics: list[float],
                                         refused: bool) -> None:
    from pipeline.tracking import refuse_if_live

    run = _run(status, start, metrics)
    if refused:
        with pytest.raises(TrackingError, match=r"--resume demo-1: run r+ is RUNNING"):
            refuse_if_live(run, "demo-1", now=1000.0)
    else:
        refuse_if_live(run, "demo-1", now=1000.0)


def test_default_names_come_from_one_place() -> None:
    from pipeline.config import load_config
    from pipeline.tracking import default_run_name, registered_model_name

    cfg = load_config(None, ['train.name="demo"'])
    assert registered_model_name(cfg) == "demo-encoder"
    assert default_run_name(cfg).startswith("demo-20") and len(default_run_name(cfg)) == 20
    named = load_config(None, ['train.name="demo"', 'mlflow.registered_model="enc"',
                               'ray.run_name="night-1"'])
    assert registered_model_name(named) == "enc" and default_run_name(named) == "night-1"
