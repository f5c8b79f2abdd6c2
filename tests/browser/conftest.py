"""Browser fixtures: a headless Debian Chromium driven by Selenium, and a run to look at.

Chromium and its driver come from Debian (`apt-get install -y chromium chromium-driver`;
`make test` installs them when run as root). The driver path is given explicitly, so
Selenium Manager (which would download a driver) never runs; the fixture makes any call to
it an error to be sure. Without the binaries or the `selenium` package the tests skip,
saying what to install.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

CHROMIUM = os.environ.get("MOCOPIPE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MOCOPIPE_CHROMEDRIVER", "/usr/bin/chromedriver")
HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1400,1000")
DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "configs", "demo.toml")


@pytest.fixture(scope="session")
def chrome() -> Iterator[Any]:
    """A headless Chromium WebDriver (session-scoped; quit at the end, which stops the driver)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"browser tests need {' and '.join(missing)}: install them with "
                    "`apt-get install -y chromium chromium-driver` (`make test` does this as root)")
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="browser tests need selenium: pip install -e '.[test]'")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def _no_downloads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Selenium Manager was asked for a driver: it must never download one")

    saved = SeleniumManager.binary_paths
    SeleniumManager.binary_paths = _no_downloads  # type: ignore[method-assign]
    options = Options()
    options.binary_location = CHROMIUM
    for flag in HEADLESS_FLAGS:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    except BaseException:
        SeleniumManager.binary_paths = saved  # type: ignore[method-assign]
        raise
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
        SeleniumManager.binary_paths = saved  # type: ignore[method-assign]


@dataclass
class UiRun:
    """A finished training run on the stack's MLflow server, and what its page must show."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    run_name: str
    model_name: str
    model_version: str
    checkpoint_dir: str  # one folder under checkpoints/, e.g. "step-0000010"

    @property
    def url(self) -> str:
        return f"{self.tracking_uri}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


@pytest.fixture(scope="session")
def ui_run(request: pytest.FixtureRequest, stack: Any) -> UiRun:
    """The run to browse: the session's real tiny training run (`reference_run`) when a
    conftest visible from here provides it, else a run built like one (see `_built_run`)."""
    try:
        reference = request.getfixturevalue("reference_run")
    except pytest.FixtureLookupError:
        return _built_run()
    return _from_summary(reference.summary)


def _from_summary(summary: dict[str, Any]) -> UiRun:
    """A `mocopipe train --json` summary -> UiRun (its first checkpoint folder)."""
    from pipeline.tracking import client_for

    uri = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    client = client_for(uri)
    run = client.get_run(summary["run_id"])
    ckpts = sorted(i.path for i in client.list_artifacts(run.info.run_id, "checkpoints"))
    assert ckpts, f"training run {run.info.run_id} logged no checkpoints"
    return UiRun(uri, run.info.experiment_id, run.info.run_id, run.info.run_name,
                 summary["registered_model"], str(summary["model_version"]),
                 ckpts[0].rsplit("/", 1)[-1])


def _built_run() -> UiRun:
    """A run shaped like a demo training run: the demo config as params (via the project's
    tracking module), a `loss` metric over steps, a `checkpoints/step-0000010/` folder, and a
    registered encoder version."""
    from mlflow.entities import Metric

    from pipeline.config import load_config
    from pipeline.tracking import client_for, open_run

    tag = uuid.uuid4().hex[:6]
    cfg = load_config(DEMO, [f"train.name=browser-{tag}",
                             f"mlflow.registered_model=browser-{tag}-encoder"])
    run = open_run(cfg, run_name=f"demo-browser-{tag}", tags={"mocopipe.dataset": cfg.data.train})
    client = client_for(run.tracking_uri)
    metrics = [Metric("loss", 8.3 - 0.9 * i + 0.1 * (i % 2), 1_700_000_000_000 + i, 10 * i)
               for i in range(1, 9)]
    client.log_batch(run.run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "step-0000010")
        os.makedirs(ckpt)
        for name, data in (("state.pt", b"\0" * 64), ("COMPLETE", b'{"step": 10}')):
            with open(os.path.join(ckpt, name), "wb") as f:
                f.write(data)
        client.log_artifacts(run.run_id, tmp, artifact_path="checkpoints")
    client.set_terminated(run.run_id, "FINISHED")
    model = cfg.mlflow.registered_model
    client.create_registered_model(model)
    mv = client.create_model_version(model, source=f"runs:/{run.run_id}/encoder",
                                     run_id=run.run_id)
    return UiRun(run.tracking_uri, run.experiment_id, run.run_id, run.run_name, model,
                 str(mv.version), "step-0000010")
