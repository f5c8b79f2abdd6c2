"""The MLflow UI of the local stack, in a real headless Chromium: what a user sees of a run.

Checks the run page shows the run name, a `loss` chart, the checkpoints folder and the
registered model. Screenshots go to the test's tmp_path; with MOCOPIPE_UPDATE_SCREENSHOT=1
the run page is also copied to docs/img/mlflow-run.png (the README's picture).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import UiRun

pytestmark = [pytest.mark.integration, pytest.mark.browser]

WAIT_S = 60  # the UI is a React app: elements appear after its API calls return
README_SHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "mlflow-run.png"


def _wait(driver: Any, what: str, condition: Any) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S).until(condition)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text[:1500]
        pytest.fail(f"{what}: not shown within {WAIT_S}s on {driver.current_url}; page text:\n{body}")


def _use_model_training_view(driver: Any, tracking_uri: str) -> None:
    """Ask the UI (through its saved preferences) for the "Model training" workflow and a
    closed Assistant panel: cosmetic only, the checks below do not depend on it."""
    driver.get(f"{tracking_uri}/")
    driver.execute_script(
        "localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'));"
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")


def _close_assistant(driver: Any) -> None:
    """Close the MLflow Assistant side panel (if shown) so the run fills the screenshot."""
    for button in driver.find_elements("css selector", "button[aria-label='Close']"):
        if button.is_displayed():
            button.click()
            return


def test_run_page_shows_name_loss_chart_checkpoints_and_model(chrome: Any, ui_run: UiRun,
                                                              tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    # Overview: the run name as the page title, and the registered model with its version.
    _use_model_training_view(chrome, ui_run.tracking_uri)
    chrome.get(ui_run.url)
    chrome.refresh()  # only the hash changed: reload so the app starts with those preferences
    _wait(chrome, f"run name {ui_run.run_name!r}", lambda d: any(
        e.text.strip() == ui_run.run_name for e in d.find_elements(By.CSS_SELECTOR, "h1, h2")))
    version_page = f"#/models/{ui_run.model_name}/versions/{ui_run.model_version}"
    link = _wait(chrome, f"registered model {ui_run.model_name!r}", lambda d: next(
        (a for a in d.find_elements(By.CSS_SELECTOR, "a[href*='/models/']")
         if (a.get_attribute("href") or "").endswith(version_page)), None))
    assert link.text.split() == [ui_run.model_name, f"v{ui_run.model_version}"]
    _close_assistant(chrome)
    chrome.execute_script("window.scrollTo(0, 0)")
    overview = tmp_path / "run-overview.png"
    assert chrome.save_screenshot(str(overview))

    # Model metrics: a chart card titled `loss` holding a drawn plotly line. The UI groups
    # metrics by prefix (the `startup/*` section comes first) and draws charts only once
    # they scroll into view: scroll every scrollable area a little further at each poll.
    chrome.get(f"{ui_run.url}/model-metrics")

    def loss_card(d: Any) -> Any:
        found = next((c for c in d.find_elements(By.CSS_SELECTOR,
                                                 "[data-testid='experiment-view-compare-runs-card']")
                      if c.text.splitlines()[:1] == ["loss"]
                      and c.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .trace")),
                     None)
        if found is None:
            d.execute_script("document.querySelectorAll('*').forEach(e => {"
                             " if (e.scrollHeight > e.clientHeight + 10) e.scrollTop += 400; });"
                             " window.scrollBy(0, 400);")
        else:
            d.execute_script("arguments[0].scrollIntoView()", found)
        return found

    card = _wait(chrome, "a `loss` chart", loss_card)
    assert "Step" in card.text  # the x axis is the training step
    assert chrome.save_screenshot(str(tmp_path / "run-metrics.png"))

    # Artifacts: the checkpoints folder, expanded to its step folder.
    chrome.get(f"{ui_run.url}/artifacts")
    folder = _wait(chrome, "the checkpoints folder", lambda d: next(iter(d.find_elements(
        By.CSS_SELECTOR, "[data-testid='artifact-tree-node'][artifact-name='checkpoints']")), None))
    folder.click()
    _wait(chrome, f"checkpoints/{ui_run.checkpoint_dir}", lambda d: d.find_elements(
        By.CSS_SELECTOR,
        f"[data-testid='artifact-tree-node'][artifact-name='{ui_run.checkpoint_dir}']"))
    assert chrome.save_screenshot(str(tmp_path / "run-artifacts.png"))

    if os.environ.get("MOCOPIPE_UPDATE_SCREENSHOT") == "1":
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(overview, README_SHOT)
