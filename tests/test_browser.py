"""The panel in a real browser: JupyterLab (and the Notebook 7 interface) started here on
127.0.0.1, driven by Playwright through Debian's chromium.

The demo notebook defines three stages (numbers -> scaled -> total; ``scaled`` reads the global
``SCALE``) and shows the panel. The test runs every cell, changes ``SCALE`` in its cell, clicks
Run on ``total`` in the panel and checks the value a later cell prints.

Screenshots go to tests/artifacts/browser/ (gitignored).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
HERE = Path(__file__).parent
NOTEBOOK = HERE / "notebooks" / "panel_demo.ipynb"
SHOTS = HERE / "artifacts" / "browser"
# generous: a cold kernel start on a slow CI machine; lower it locally to fail fast
WAIT_MS = int(os.environ.get("PIPELITE_BROWSER_WAIT_MS", 90_000))

if not Path(CHROMIUM).exists():  # pragma: no cover - scripts/setup.sh installs it
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
expect.set_options(timeout=WAIT_MS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """A `jupyter lab` process of our own, on loopback, with throwaway settings."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        private = root.parent / f"{root.name}-private"
        settings = private / "settings"
        # no "would you like news?" toast over the notebook (and no network access for it)
        notes = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        notes.parent.mkdir(parents=True)
        notes.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = dict(os.environ)
        env.update(JUPYTER_RUNTIME_DIR=str(private / "runtime"),
                   JUPYTER_CONFIG_DIR=str(private / "config"),
                   IPYTHONDIR=str(private / "ipython"))
        env.pop("JUPYTER_TOKEN", None)
        self.log_path = private / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
             f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={root}",
             f"--LabApp.user_settings_dir={settings}",
             f"--LabApp.workspaces_dir={private / 'workspaces'}"],
            cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its kernels share its process group: we stop them all
        )

    def api(self, path: str, method: str = "GET") -> object:
        req = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def wait_until_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({self.proc.returncode}):\n{self.log()}")
            try:
                self.api("status")
                return
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"jupyter lab did not answer in {timeout} s:\n{self.log()}") from exc
                time.sleep(0.25)

    def wait_for_kernel(self, notebook: str, timeout: float = WAIT_MS / 1000) -> None:
        """Until the notebook's kernel is started, idle and connected to a browser tab."""
        deadline = time.monotonic() + timeout
        while True:
            for session in self.api("sessions") or []:
                kernel = session.get("kernel") or {}
                if (session.get("path") == notebook and kernel.get("connections", 0) >= 1
                        and kernel.get("execution_state") == "idle"):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no idle kernel connected for {notebook} in {timeout} s: "
                                   f"{self.api('sessions')}\n{self.log()}")
            time.sleep(0.25)

    def url(self, path: str) -> str:
        return f"{self.base}/{path}?token={self.token}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        try:
            for kernel in self.api("kernels") or []:
                self.api(f"kernels/{kernel['id']}", method="DELETE")
        except Exception:  # noqa: BLE001 - the server may be gone already; we kill below
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        try:  # anything it started that outlived it (a kernel): same process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    root = tmp_path_factory.mktemp("jupyter-root")
    for ui in ("lab", "nb7"):  # one store per interface: each notebook's kernel runs in its dir
        (root / ui).mkdir()
        shutil.copy(NOTEBOOK, root / ui / NOTEBOOK.name)
    server = JupyterServer(root)
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


# -- driving a notebook -----------------------------------------------------------------------
def badge(page, stage: str):
    return page.locator(f".pipelite-panel .pipelite-row-{stage} .pipelite-badge")


def expect_state(page, stage: str, state: str) -> None:
    loc = badge(page, stage)
    expect(loc).to_have_class(re.compile(rf"(^|\s)pipelite-badge-{state}(\s|$)"))
    expect(loc).to_have_text(state)


def cell_badge(page, stage: str):
    """The state badge at the top of stage ``stage``'s own cell output."""
    return page.locator(f'.jp-OutputArea .pipelite-cell-badge[data-stage="{stage}"]')


def expect_cell_state(page, stage: str, state: str, reason: str | None = None) -> None:
    loc = cell_badge(page, stage)
    expect(loc).to_have_count(1)
    expect(loc).to_have_attribute("data-state", state)
    if reason is not None:
        expect(loc.locator(".pipelite-cell-badge-reason")).to_have_text(reason)


def code_cell(page, text: str):
    """The code cell whose source contains ``text`` now (stays that cell after edits)."""
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    sources = cells.locator(".jp-InputArea").all_inner_texts()
    matches = [i for i, source in enumerate(sources) if text in source]
    assert len(matches) == 1, f"{len(matches)} cells contain {text!r}: {sources}"
    return cells.nth(matches[0])


def run_cell(page, cell, new_source: str | None = None) -> None:
    editor = cell.locator(".jp-InputArea .cm-content")
    editor.click()
    if new_source is not None:
        page.keyboard.press("Control+a")
        page.keyboard.type(new_source)
        expect(editor).to_have_text(new_source)
    page.keyboard.press("Shift+Enter")


def run_all_cells(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def open_notebook(page, jupyter: JupyterServer, route: str, notebook: str) -> None:
    page.goto(jupyter.url(f"{route}/{notebook}"))
    expect(page.locator(".jp-Notebook .jp-CodeCell").first).to_be_visible()
    # every cell is in the page (a notebook may render its cells progressively)
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    expect(page.locator(".jp-Notebook .jp-CodeCell")).to_have_count(
        sum(c["cell_type"] == "code" for c in cells))
    # "Run All" before the kernel is connected opens a kernel picker. The toolbar's indicator
    # says "idle" before a kernel even exists, so ask the server first, then the page.
    jupyter.wait_for_kernel(notebook)
    expect(page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')).to_have_count(1)


def shot(page, locator, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    locator.screenshot(path=str(path))
    page.screenshot(path=str(SHOTS / f"{name}-page.png"))
    return path


def run_the_scenario(page, jupyter: JupyterServer, route: str, notebook: str, name: str) -> None:
    open_notebook(page, jupyter, route, notebook)
    run_all_cells(page)

    panel = page.locator(".pipelite-panel")
    expect(panel).to_be_visible()
    last = code_cell(page, "print('RESULT total ='")
    expect(last.locator(".jp-OutputArea")).to_contain_text("RESULT total = 20 with SCALE = 2")
    for stage in ("numbers", "scaled", "total"):
        expect_state(page, stage, "fresh")
        expect_cell_state(page, stage, "fresh")  # the badge on the stage's own cell
    expect(panel.locator(".pipelite-counts")).to_have_text("3 fresh")
    expect(panel.locator(".pipelite-row-total .pipelite-outputs")).to_contain_text("total (")
    expect(panel.locator(".pipelite-row-scaled .pipelite-reason")).to_be_hidden()
    expect(panel.locator(".pipelite-run-all")).to_be_disabled()

    # a new value for the global that `scaled` reads: the panel notices after the cell runs
    scale_cell = code_cell(page, "SCALE = 2")
    run_cell(page, scale_cell, "SCALE = 3")
    expect_state(page, "scaled", "stale")
    expect_state(page, "total", "stale")
    expect_state(page, "numbers", "fresh")
    expect(panel.locator(".pipelite-row-scaled .pipelite-reason")).to_have_text(
        "global 'SCALE' changed")
    expect(panel.locator(".pipelite-row-total .pipelite-reason")).to_have_text(
        "upstream stage 'scaled' is stale: global 'SCALE' changed")
    expect(panel.locator(".pipelite-run-all")).to_have_text("Run all stale (2)")
    # the cells' badges, updated in place by a cell that is not theirs
    expect_cell_state(page, "scaled", "stale", "global 'SCALE' changed")
    expect_cell_state(page, "total", "stale",
                      "upstream stage 'scaled' is stale: global 'SCALE' changed")
    expect_cell_state(page, "numbers", "fresh")
    shot(page, panel, f"{name}-stale")
    shot(page, code_cell(page, "%%stage scaled"), f"{name}-cell-badge-stale")

    panel.locator(".pipelite-row-total .pipelite-run").click()
    expect_state(page, "scaled", "fresh")
    expect_state(page, "total", "fresh")
    expect(panel.locator(".pipelite-progress-text")).to_contain_text(
        "last run: 2 stages computed in")
    expect(panel.locator(".pipelite-panel-error")).to_be_hidden()
    expect_cell_state(page, "scaled", "fresh")  # a panel run updates the cells' badges too
    expect_cell_state(page, "total", "fresh")

    run_cell(page, last)
    expect(last.locator(".jp-OutputArea")).to_contain_text("RESULT total = 30 with SCALE = 3")
    shot(page, panel, f"{name}-fresh")

    panel.locator(".pipelite-graph-toggle").click()
    expect(panel.locator(".pipelite-graph svg, .pipelite-graph img").first).to_be_visible()
    shot(page, panel, f"{name}-graph")
    panel.locator(".pipelite-graph-toggle").click()
    expect(panel.locator(".pipelite-graph")).to_be_hidden()

    # a stage that raises, run from the panel: the error shows in its row, the kernel lives on
    run_cell(page, scale_cell, 'SCALE = "x"')  # total = sum(["x", "xx", ...]) raises
    expect_state(page, "total", "stale")
    panel.locator(".pipelite-row-total .pipelite-run").click()
    expect_state(page, "total", "failed")
    expect_state(page, "scaled", "fresh")
    expect(panel.locator(".pipelite-row-total .pipelite-error")).to_contain_text(
        "last run failed: TypeError: unsupported operand type(s) for +: 'int' and 'str'")
    expect(panel.locator(".pipelite-counts")).to_have_text("2 fresh 1 failed")
    expect_cell_state(page, "total", "failed",
                      "TypeError: unsupported operand type(s) for +: 'int' and 'str'")
    shot(page, panel, f"{name}-failed")
    run_cell(page, last)
    expect(last.locator(".jp-OutputArea")).to_contain_text("RESULT total = 30 with SCALE = x")


def run_or_record(page, jupyter, route: str, notebook: str, name: str) -> None:
    try:
        run_the_scenario(page, jupyter, route, notebook, name)
    except BaseException:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}-FAILED.png"))
        print(f"--- jupyter server log (tail) ---\n{jupyter.log()}")
        raise


def test_the_panel_in_jupyterlab_runs_a_stale_stage_and_binds_its_value(jupyter, page):
    run_or_record(page, jupyter, "lab/tree", f"lab/{NOTEBOOK.name}", "lab")


def test_the_panel_in_the_notebook_7_interface(jupyter, page):
    run_or_record(page, jupyter, "notebooks", f"nb7/{NOTEBOOK.name}", "notebook7")
