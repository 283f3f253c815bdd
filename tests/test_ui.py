"""The MLflow UI of a real `mlflow server`, opened in headless Debian Chromium (Playwright):
three tiny runs, one per architecture, side by side in the run comparison with their val/accuracy.

Needs /usr/bin/chromium (`make browser` installs it with apt as root); skips with the reason when it is
missing. The browser reaches 127.0.0.1 only: every other request is aborted. The screenshot goes to
the test's temporary folder; `make screenshot` (UPDATE_SCREENSHOTS=1) re-records docs/mlflow-compare.png.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bilstm_exp.config.compose import compose
from bilstm_exp.config.schema import validate
from bilstm_exp.training import runner as training
from tests.conftest import ROOT, tiny

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "docs" / "mlflow-compare.png"
ARCHITECTURES = ["basic", "attention", "stacked"]


def compare_url(server: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    """The MLflow 3 UI route of the run comparison: #/compare-runs?runs=[JSON]&experiments=[JSON]."""
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps(experiment_ids)})
    return f"{server}/#/compare-runs?{query}"


def pick(page, index: int, option: str) -> None:
    """Choose OPTION in the parallel-coordinates plot's select INDEX (0: parameters, 1: metrics)."""
    panel = page.get_by_role("tabpanel", name="Parallel Coordinates Plot")
    panel.locator(".du-bois-light-select").nth(index).locator(".du-bois-light-select-selector").click()
    page.keyboard.type(option)
    page.locator(f'.du-bois-light-select-item-option[title="{option}"]').click()
    page.keyboard.press("Escape")


@pytest.fixture
def chromium():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium: run `make browser` as root "
                    "(apt-get install chromium); no browser is downloaded")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_run_comparison_shows_the_runs_and_their_val_accuracy(chromium, mlflow_server, workdir, unique_name,
                                                               tmp_path):
    experiment = "compare-architectures-" + unique_name[-8:]
    runs = {}
    for architecture in ARCHITECTURES:  # real tiny runs, tracked on the server
        config = validate(compose(tiny(architecture, "tracking=server", f"tracking.tracking_uri={mlflow_server}",
                                       f"tracking.experiment_name={experiment}", "tracking.register_model=false",
                                       "data.num_samples=240", "training.epochs=2", "optimizer.learning_rate=0.01",
                                       "training.early_stopping.enabled=false", "training.verbose=0")))
        result = training.run(config, root=workdir, overrides=[f"model={architecture}"])
        runs[result.run_id] = MlflowClient(mlflow_server).get_run(result.run_id)
    experiment_id = next(iter(runs.values())).info.experiment_id

    page = chromium.new_page(viewport={"width": 1200, "height": 1850})
    page.route("**/*", lambda route: route.continue_() if urllib.parse.urlsplit(route.request.url).hostname
               == "127.0.0.1" else route.abort())  # the browser reaches the test server only
    page.goto(compare_url(mlflow_server, list(runs), [experiment_id]))
    page.get_by_text(f"Comparing {len(runs)} Runs from 1 Experiment").wait_for(timeout=60_000)
    assert page.get_by_role("link", name=experiment).count() >= 1  # the experiment, in the breadcrumb

    # Run details: one column per run, in the order of the URL.
    for run in runs.values():
        assert page.get_by_text(run.info.run_name, exact=True).count() >= 1, run.info.run_name
    header = page.locator("tr", has=page.locator("th", has_text="Run ID:")).first
    assert [cell.inner_text().strip() for cell in header.locator("th.data-value").all()] == list(runs)

    # For the picture: architecture against val/accuracy in the parallel-coordinates plot, only the
    # parameters and metrics that differ, and no assistant panel.
    page.get_by_test_id("clear-button").click()
    pick(page, 0, "model.name")
    pick(page, 1, "val/accuracy")
    page.locator(".pcp-plot").get_by_text("val/accuracy").first.wait_for(timeout=10_000)
    page.get_by_role("switch", name="Parameters - Show diff only").click()
    page.get_by_role("switch", name="Metrics - Show diff only").click()
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.click()

    # Metrics: a virtualised grid of names beside a grid of values (one column per run). Scroll the values
    # grid until the val/accuracy row is rendered, then bring the names grid level with it (the UI syncs the
    # names one event late) and read the row's cells (the UI rounds to 3 decimals).
    names, values = (page.locator(".ReactVirtualized__Grid").nth(i) for i in (0, 1))
    link = names.get_by_role("link", name="val/accuracy", exact=True)
    for offset in range(0, values.evaluate("grid => grid.scrollHeight") + 200, 200):
        if link.count():
            break
        values.evaluate("(grid, offset) => { grid.scrollTop = offset; }", offset)
        page.wait_for_timeout(100)
    top = link.evaluate("a => a.parentElement.style.top")  # e.g. "1395px"
    values.evaluate("(grid, offset) => { grid.scrollTop = offset; }", int(top.removesuffix("px")) - 90)
    page.wait_for_timeout(200)
    names.evaluate("(grid, offset) => { grid.scrollTop = offset; }", values.evaluate("grid => grid.scrollTop"))
    page.wait_for_timeout(200)
    shown = [float(cell.inner_text()) for cell in values.locator(f'div[style*="top: {top};"]').all()]
    logged = [run.data.metrics["val/accuracy"] for run in runs.values()]
    assert shown == pytest.approx(logged, abs=5e-4)

    page.get_by_text(f"Comparing {len(runs)} Runs").scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # let plotly finish its transition before the picture
    shot = tmp_path / "mlflow-compare.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_the_runs_table_shows_a_default_runs_datasets(chromium, mlflow_server, workdir, unique_name, tmp_path):
    """The Dataset column of the experiment's runs table names the run's splits (MLflow dataset inputs):
    the first with its digest, "+2" for the other two."""
    experiment = "datasets-" + unique_name[-8:]
    config = validate(compose(tiny("basic", "tracking=server", f"tracking.tracking_uri={mlflow_server}",
                                   f"tracking.experiment_name={experiment}", "training.verbose=0")))
    result = training.run(config, root=workdir, overrides=[])
    run = MlflowClient(mlflow_server).get_run(result.run_id)

    page = chromium.new_page(viewport={"width": 1600, "height": 900})
    page.route("**/*", lambda route: route.continue_() if urllib.parse.urlsplit(route.request.url).hostname
               == "127.0.0.1" else route.abort())
    page.goto(f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs")
    page.get_by_text(run.info.run_name, exact=True).first.wait_for(timeout=60_000)
    page.get_by_role("columnheader", name="Dataset").first.wait_for(timeout=30_000)
    # the experiment's one run: its Dataset cell, e.g. "synthetic-train (ad71464f9cc2543ff...)  +2"
    digest = next(d.dataset.digest for d in run.inputs.dataset_inputs if d.dataset.name == "synthetic-train")
    cell = page.get_by_role("gridcell").filter(has_text=f"synthetic-train ({digest[:12]}")
    cell.first.wait_for(timeout=30_000)
    assert "+2" in cell.first.inner_text(), cell.first.inner_text()
    page.screenshot(path=str(tmp_path / "mlflow-datasets.png"))
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(tmp_path / "mlflow-datasets.png", SCREENSHOT.with_name("mlflow-datasets.png"))
