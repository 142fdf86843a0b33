"""The widgets in a real browser: JupyterLab driven by headless Chromium (marker ``browser``).

A temporary copy of ``notebooks/02_masking.ipynb`` is opened in JupyterLab (``--no-browser``, a
free port, a token) with a kernel spec named as the notebook's (``mae3d``) that runs this very
Python, in a temporary ``JUPYTER_PATH``; Chromium runs every cell, the test checks that every
widget rendered (no "Error displaying widget"), moves the masking explorer's ratio slider with the
keyboard and waits for the masked fraction it shows to change. A screenshot is saved under the
test's tmp dir (and ``$MAE3D_SCREENSHOT_DIR`` when set).

Needs ``chromium`` and ``chromedriver`` on PATH (Debian: ``apt-get install chromium
chromium-driver``, as ``.ci/run`` does); skipped with that reason otherwise. Every wait polls a
condition with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_masking.ipynb"


def _browser() -> tuple[str, str] | None:
    chrome = next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )
    driver = shutil.which("chromedriver")
    return (chrome, driver) if chrome and driver else None


def _missing() -> str | None:
    if _browser() is None:
        return (
            "no chromium + chromedriver on PATH: apt-get install chromium chromium-driver "
            "(.ci/run does) to run the real-browser test"
        )
    for module in ("selenium", "jupyterlab", "ipykernel"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[dev]')"
    return None


pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(_missing() is not None, reason=_missing() or ""),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(
    what: str,
    check: Any,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> Any:
    """Poll ``check()`` until it returns a truthy value; fail with ``what`` (and the end of the
    server's log) at the deadline or when the server has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        ended = proc is not None and proc.poll() is not None
        if ended or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.is_file() else ""
            code = proc.returncode if proc is not None else None
            why = f"JupyterLab exited with {code}" if ended else f"not after {timeout:.0f} s"
            pytest.fail(f"{what}: {why}\n{tail}")
        time.sleep(0.2)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path, Any]]:
    """JupyterLab serving a copy of notebook 02, started and not yet waited for (Chromium starts
    meanwhile); yields ``(url of the notebook, log file, wait_until_ready)``."""
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    # The kernel the notebook names, running this interpreter (its venv, this checkout).
    spec = tmp_path / "jupyter" / "kernels" / "mae3d"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python (mae3d)",
                "language": "python",
            }
        )
    )
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_PATH": str(tmp_path / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "TOOLKIT_PROFILE": "tiny",
        "MAE3D_VIEWER": "inline",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    log = tmp_path / "lab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
                f"--port={port}", f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={work}", "--allow-root",
                "--ServerApp.port_retries=0", "--LabApp.expose_app_in_browser=True",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
            ],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_until_ready() -> None:
        _wait("JupyterLab server", ready, 60, proc, log)

    try:
        yield f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", log, wait_until_ready
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def chrome() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = _browser()
    assert found is not None
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,2400"):
        options.add_argument(arg)
    options.add_argument("--disable-dev-shm-usage")
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# The notebook's state as the app sees it: every code cell's execution count, and the kernel.
_CELLS_JS = """
const app = window.jupyterapp;
const panel = app && app.shell.currentWidget;
if (!panel || !panel.content || !panel.sessionContext) { return null; }
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
const cells = panel.content.widgets.filter(c => c.model.type === 'code');
return {
  status: kernel ? kernel.status : 'none',
  counts: cells.map(c => c.model.executionCount),
  errors: cells.flatMap(c => c.model.outputs.toJSON())
               .filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
};
"""


def test_masking_notebook_widgets_render_and_respond(
    lab: tuple[str, Path, Any],
    chrome: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, log, wait_until_ready = lab
    started = time.perf_counter()
    wait_until_ready()
    chrome.get(url)

    def idle_notebook() -> bool:
        state = chrome.execute_script(_CELLS_JS)
        return bool(state and state["status"] == "idle")

    _wait("notebook open with an idle kernel", idle_notebook, 90, log=log)
    chrome.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    def all_run() -> dict[str, Any] | None:
        state = chrome.execute_script(_CELLS_JS)
        done = state and state["counts"] and all(c is not None for c in state["counts"])
        return state if done and state["status"] == "idle" else None

    state = _wait("every cell executed", all_run, 180, log=log)
    assert not state["errors"], state["errors"]

    def page_text() -> str:
        return str(chrome.execute_script("return document.body.innerText"))

    # Widgets render as views, not as the "Error displaying widget" placeholder.
    views = _wait(
        "widget views rendered",
        lambda: chrome.find_elements(By.CSS_SELECTOR, ".jupyter-widgets.widget-slider"),
        30,
    )
    assert "Error displaying widget" not in page_text()
    assert "model not found" not in page_text()

    # The explorer's fixed-ratio slider (the toggle above it is also described "ratio").
    sliders = [
        s
        for s in views
        if s.find_elements(By.CSS_SELECTOR, ".widget-label")
        and s.find_element(By.CSS_SELECTOR, ".widget-label").text.strip() == "ratio"
        and "widget-hslider" in (s.get_attribute("class") or "")
    ]
    assert sliders, "no 'ratio' slider in the masking explorer"
    slider = sliders[0]

    def fraction_shown() -> str:
        for el in chrome.find_elements(By.CSS_SELECTOR, ".widget-html-content"):
            text = el.text.strip()
            if text.startswith("masked fraction"):
                return text.split("—")[0].strip()
        return ""

    before = _wait("masked fraction shown", fraction_shown, 30)
    readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout").text.strip()
    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    chrome.execute_script("arguments[0].scrollIntoView({block: 'center'})", handle)
    handle.click()
    handle.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    after = _wait("masked fraction changed", lambda: fraction_shown() not in ("", before), 30)
    assert after
    moved = slider.find_element(By.CSS_SELECTOR, ".widget-readout").text.strip()
    assert float(moved) > float(readout), (readout, moved)
    assert "Error displaying widget" not in page_text()

    shot = tmp_path / "masking_notebook.png"
    chrome.execute_script("arguments[0].scrollIntoView({block: 'center'})", handle)
    chrome.save_screenshot(str(shot))
    extra = os.environ.get("MAE3D_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(extra) / shot.name)
    assert shot.stat().st_size > 10_000
    with capsys.disabled():
        print(
            f"\nbrowser: {before!r} -> {fraction_shown()!r} (ratio {readout} -> {moved}); "
            f"{time.perf_counter() - started:.0f} s in Chromium; screenshot {shot}"
        )
