"""The search's interactive trade-off figure, opened the way a researcher opens it: a real ``mlflow ui``
on 127.0.0.1 serving a search's record, a real headless Chromium (Debian's, driven by Playwright), every
request that leaves the machine refused (an offline cluster). The figure's points must be drawn, so its
plotly.js must travel with it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hyperlab.metrics import COMPLETE
from hyperlab.search.report import SearchReporter
from hyperlab.tracking import layout
from hyperlab.tracking.writer import SearchWriter

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OBJECTIVES = {"model/n_params": "min", "val/bpc": "min"}
POINTS = [(1000, 2.0), (2000, 1.6), (4000, 1.5), (3000, 1.9), (8000, 1.45)]


def record_search(uri: str) -> tuple[str, str]:
    """A finished search's record through hyperlab's own writer and reporter: (experiment id, parent id)."""
    writer = SearchWriter(uri, "browser", OBJECTIVES)
    parent = writer.start({}, {}, {})
    reporter = SearchReporter(writer, OBJECTIVES, every_s=0)
    for number, (n_params, bpc) in enumerate(POINTS):
        writer.start_trial(number, f"t{number}", {"model.n_z": number + 1}, {})
        writer.log_metrics(number, {"model/n_params": n_params, "val/bpc": bpc, "train/loss": bpc}, step=10)
        writer.end_trial(number, COMPLETE, "completed")
        reporter.trial_ended(number, {"model.n_z": number + 1}, {"model/n_params": n_params, "val/bpc": bpc},
                             COMPLETE)
    reporter.publish(force=True)
    writer.finish()
    return writer.experiment_id, parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_ui(mlflow_store, tmp_path):
    port = free_port()
    log = open(tmp_path / "ui.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", mlflow_store,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_store})
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "ui.log").read_text()
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (Debian's chromium package) to drive")
def test_the_tradeoff_figure_draws_its_points_offline_in_the_mlflow_ui(mlflow_store, mlflow_ui, tmp_path):
    from playwright.sync_api import sync_playwright

    experiment, parent = record_search(mlflow_store)
    from mlflow import MlflowClient

    html = Path(MlflowClient(mlflow_store).download_artifacts(parent, layout.TRADEOFF_HTML_ARTIFACT, str(tmp_path)))
    text = html.read_text()
    assert 'src="https://cdn.plot.ly' not in text and "Plotly.newPlot" in text  # it carries its plotly.js
    assert len(text) > 1_000_000
    refused = []
    with sync_playwright() as playwright:
        # offline: every request that is not to this machine goes to a proxy that is not there
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"],
                                             proxy={"server": "http://127.0.0.1:9", "bypass": "127.0.0.1"})
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.on("requestfailed", lambda request: refused.append(request.url))
        page = context.new_page()
        # the link hyperlab prints opens the search's runs; the front tag filters them to the front
        page.goto(f"{mlflow_ui}/#/experiments/{experiment}?workflowType=machine_learning")
        box = page.get_by_placeholder("metrics.rmse", exact=False)
        box.wait_for(timeout=60_000)
        box.fill(f"tags.{layout.TAG_FRONT} = '1'")
        box.press("Enter")
        parent_row = page.get_by_role("row").filter(has_text="browser").first
        parent_row.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # its trials
        page.get_by_text("t00 z1", exact=True).wait_for(timeout=30_000)
        shown = [page.get_by_text(f"t{n:02d} z{n + 1}", exact=True).count() for n in range(len(POINTS))]
        assert shown == [1, 1, 1, 0, 1]  # run names carry trial and values; trial 3 is off the front

        page = context.new_page()  # the parent run's figure, opened as a link opens it
        page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs/{parent}/artifacts/{layout.TRADEOFF_HTML_ARTIFACT}")
        markers = page.frame_locator("iframe").locator(".scatterlayer .trace .points path")
        markers.first.wait_for(timeout=90_000)
        drawn = markers.count()
        browser.close()
    front = [n for n, p in enumerate(POINTS) if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in POINTS)]
    assert front == [0, 1, 2, 4]  # (3000, 1.9) is dominated by (2000, 1.6)
    assert drawn >= len(POINTS)  # every trial is a marker (the front's are drawn once more, with the knee)
    assert not refused, refused  # nothing the UI or the figure needs lies off this machine
