"""The panel in a real browser: JupyterLab (and the Notebook 7 interface) started here on
127.0.0.1, driven by Playwright through Debian's chromium.

The demo notebook defines three stages (numbers -> scaled -> total; ``scaled`` reads the global
``SCALE``), a 20 s stage it only defines (``slow``), and shows the panel. Another notebook in
the same folder ran before and left stages in the shared store, one of them named ``numbers``
too. The test runs every cell, checks the name warning and the collapsed group of the other
notebook's stages, changes ``SCALE`` in its cell, clicks Run on ``total`` in the panel (its
cell's output is replaced), checks the value a later cell prints, starts ``slow`` and cancels
it, and measures the contrast of every text, in the light and in the dark theme.

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


OTHER_CELLS = ["%load_ext pipelite",
               "%%stage numbers\nnumbers = [10, 20]",  # the same name as the demo's stage
               "%%stage features\nfeatures = [n / 10 for n in numbers]",
               "%%stage model\nmodel = sum(features)"]


def run_other_notebook(folder: Path) -> None:
    """Another notebook of the folder, run before (headless, as Jupyter would start its
    kernel): its stages are in the shared store, with the notebook that defined them."""
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(c) for c in OTHER_CELLS])
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute(
        env={**os.environ, "JPY_SESSION_NAME": str(folder / "other.ipynb")})


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    root = tmp_path_factory.mktemp("jupyter-root")
    for ui in ("lab", "nb7"):  # one store per interface: each notebook's kernel runs in its dir
        (root / ui).mkdir()
        shutil.copy(NOTEBOOK, root / ui / NOTEBOOK.name)
        run_other_notebook(root / ui)
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
    # "reset": JupyterLab would otherwise reopen the notebooks an earlier test left open
    page.goto(jupyter.url(f"{route}/{notebook}") + ("&reset" if route.startswith("lab") else ""))
    expect(page.locator(".jp-Notebook .jp-CodeCell").first).to_be_visible()
    # every cell is in the page (a notebook may render its cells progressively)
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    expect(page.locator(".jp-Notebook .jp-CodeCell")).to_have_count(
        sum(c["cell_type"] == "code" for c in cells))
    # "Run All" before the kernel is connected opens a kernel picker. The toolbar's indicator
    # says "idle" before a kernel even exists, so ask the server first, then the page.
    jupyter.wait_for_kernel(notebook)
    expect(page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')).to_have_count(1)


# WCAG contrast of every visible text under the selectors, against the background it is drawn
# on (backgrounds and opacities composed down the tree). Disabled buttons are exempt (WCAG
# 1.4.3), and so is the graph (its colours are the state colours of the legend).
CONTRAST_JS = """
(selectors) => {
  const parse = (c) => {
    const m = c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(',').map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const over = (top, bottom) => ({r: top.r * top.a + bottom.r * (1 - top.a),
    g: top.g * top.a + bottom.g * (1 - top.a), b: top.b * top.a + bottom.b * (1 - top.a), a: 1});
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const ratio = (a, b) => { const x = lum(a), y = lum(b);
    return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const background = (el) => {
    const chain = [];
    for (let e = el; e; e = e.parentElement) chain.unshift(e);
    let bg = {r: 255, g: 255, b: 255, a: 1};
    for (const e of chain) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) bg = over(c, bg);
    }
    return bg;
  };
  const bad = []; let checked = 0;
  for (const root of document.querySelectorAll(selectors)) {
    const walk = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    while (walk.nextNode()) {
      const node = walk.currentNode, el = node.parentElement;
      if (!node.textContent.trim() || !el.getClientRects().length) continue;
      if (el.closest('button:disabled, svg, .pipelite-graph')) continue;
      const style = getComputedStyle(el);
      if (style.visibility === 'hidden') continue;
      let opacity = 1;
      for (let e = el; e; e = e.parentElement) opacity *= Number(getComputedStyle(e).opacity);
      const bg = background(el), fg = parse(style.color);
      const shown = over({...fg, a: fg.a * opacity}, bg);
      const r = ratio(shown, bg); checked += 1;
      if (r < 4.5) bad.push(`${r.toFixed(2)}:1 ${el.className || el.tagName} ` +
                            `"${node.textContent.trim().slice(0, 40)}"`);
    }
  }
  return {checked, bad};
}
"""


def expect_readable(page, what: str) -> None:
    found = page.evaluate(CONTRAST_JS, ".pipelite-panel, .pipelite-cell-badge, "
                          ".pipelite-cell-run-output")
    assert found["checked"] > 20, found  # it did look at the panel's texts
    assert found["bad"] == [], f"text under 4.5:1 contrast ({what}): {found['bad']}"


def use_theme(page, theme: str) -> None:
    """Switch JupyterLab's theme from its Settings menu (no reload: outputs stay)."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Settings").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
    page.locator(".lm-Menu-itemLabel", has_text=theme).first.click()
    light = "false" if "Dark" in theme else "true"
    expect(page.locator(f'body[data-jp-theme-light="{light}"]')).to_have_count(1)


def shot(page, locator, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    locator.screenshot(path=str(path))
    page.screenshot(path=str(SHOTS / f"{name}-page.png"))
    return path


def run_the_scenario(page, jupyter: JupyterServer, route: str, notebook: str, name: str,
                     dark: bool = False) -> None:
    open_notebook(page, jupyter, route, notebook)
    run_all_cells(page)

    panel = page.locator(".pipelite-panel")
    expect(panel).to_be_visible()
    last = code_cell(page, "print('RESULT total ='")
    expect(last.locator(".jp-OutputArea")).to_contain_text("RESULT total = 20 with SCALE = 2")
    for stage in ("numbers", "scaled", "total"):
        expect_state(page, stage, "fresh")
        expect_cell_state(page, stage, "fresh")  # the badge on the stage's own cell
    expect_state(page, "slow", "missing")  # only defined
    expect(panel.locator(".pipelite-counts")).to_have_text("3 fresh 1 missing")
    expect(panel.locator(".pipelite-row-total .pipelite-outputs")).to_contain_text("total (")
    expect(panel.locator(".pipelite-row-scaled .pipelite-reason")).to_be_hidden()

    # another notebook of the folder uses the name `numbers` too: said before it ran
    expect(code_cell(page, "%%stage numbers").locator(".jp-OutputArea")).to_contain_text(
        "stage 'numbers' is also defined in other.ipynb")
    # and its other stages are listed apart, collapsed, and not counted with this notebook's
    group = panel.locator(".pipelite-group")
    toggle = group.locator(".pipelite-group-toggle")
    expect(toggle).to_have_text("▸ 2 stages from other.ipynb")
    expect(group.locator(".pipelite-row-features")).to_be_hidden()
    toggle.click()
    expect(group.locator(".pipelite-row-features")).to_be_visible()
    expect(group.locator(".pipelite-row-model .pipelite-undefined-tag")).to_have_text(
        "not defined in this session")
    toggle.click()
    expect(group.locator(".pipelite-row-model")).to_be_hidden()

    # clicking an output's name previews it
    panel.locator(".pipelite-row-numbers .pipelite-output-numbers").click()
    expect(panel.locator(".pipelite-row-numbers .pipelite-preview")).to_contain_text(
        "numbers: list, length 4")
    expect(panel.locator(".pipelite-row-numbers .pipelite-preview")).to_contain_text(
        "[1, 2, 3, 4]")
    expect_readable(page, f"{name}, light theme")
    panel.locator(".pipelite-row-numbers .pipelite-output-numbers").click()
    expect(panel.locator(".pipelite-row-numbers .pipelite-preview")).to_be_hidden()

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
    expect(panel.locator(".pipelite-run-all")).to_have_text("Run all stale (3)")
    # the cells' badges, updated in place by a cell that is not theirs
    expect_cell_state(page, "scaled", "stale", "global 'SCALE' changed")
    expect_cell_state(page, "total", "stale",
                      "upstream stage 'scaled' is stale: global 'SCALE' changed")
    expect_cell_state(page, "numbers", "fresh")
    shot(page, panel, f"{name}-stale")
    shot(page, code_cell(page, "%%stage scaled"), f"{name}-cell-badge-stale")

    total_cell = code_cell(page, "%%stage total")
    expect(total_cell.locator(".jp-OutputArea")).to_contain_text("total is 20")
    panel.locator(".pipelite-row-total .pipelite-run").click()
    expect_state(page, "scaled", "fresh")
    expect_state(page, "total", "fresh")
    expect(panel.locator(".pipelite-progress-text")).to_contain_text(
        "last run: 2 stages computed in")
    expect(panel.locator(".pipelite-panel-error")).to_be_hidden()
    expect_cell_state(page, "scaled", "fresh")  # a panel run updates the cells' badges too
    expect_cell_state(page, "total", "fresh")
    # and its output replaces what the stage's cell showed, under the badge
    expect(total_cell.locator(".pipelite-cell-run-output")).to_have_text(re.compile(
        r"^\s*total is 30\s*$"))
    expect(total_cell.locator(".pipelite-cell-badge-note")).to_contain_text(
        "output of the run from the panel at")
    expect(total_cell.locator(".jp-OutputArea")).not_to_contain_text("total is 20")
    shot(page, total_cell, f"{name}-cell-replaced")

    run_cell(page, last)
    expect(last.locator(".jp-OutputArea")).to_contain_text("RESULT total = 30 with SCALE = 3")
    shot(page, panel, f"{name}-fresh")

    panel.locator(".pipelite-graph-toggle").click()
    expect(panel.locator(".pipelite-graph svg, .pipelite-graph img").first).to_be_visible()
    shot(page, panel, f"{name}-graph")
    panel.locator(".pipelite-graph-toggle").click()
    expect(panel.locator(".pipelite-graph")).to_be_hidden()

    # a 20 s stage: the clock ticks while it runs, and Cancel stops it; nothing is stored
    progress = panel.locator(".pipelite-progress-text")
    panel.locator(".pipelite-row-slow .pipelite-run").click()
    expect_state(page, "slow", "running")
    expect(progress).to_contain_text("slow")
    ticking = progress.inner_text()
    expect(progress).not_to_have_text(ticking)  # the elapsed time moved on
    expect(panel.locator(".pipelite-row-slow .pipelite-when")).to_contain_text("running")
    shot(page, panel, f"{name}-running")
    panel.locator(".pipelite-cancel").click()
    expect_state(page, "slow", "missing")  # as it was
    expect(progress).to_contain_text("cancelled at")
    expect(progress).to_contain_text("stage 'slow' was stopped; nothing was stored for it")
    expect(panel.locator(".pipelite-cancel")).to_be_hidden()
    expect(panel.locator(".pipelite-row-slow .pipelite-error")).to_be_hidden()

    # a stage that raises, run from the panel: the error shows in its row, the kernel lives on
    run_cell(page, scale_cell, 'SCALE = "x"')  # total = sum(["x", "xx", ...]) raises
    expect_state(page, "total", "stale")
    panel.locator(".pipelite-row-total .pipelite-run").click()
    expect_state(page, "total", "failed")
    expect_state(page, "scaled", "fresh")
    expect(panel.locator(".pipelite-row-total .pipelite-error")).to_contain_text(
        "last run failed: TypeError: unsupported operand type(s) for +: 'int' and 'str'")
    expect(panel.locator(".pipelite-counts")).to_have_text("2 fresh 1 missing 1 failed")
    expect_cell_state(page, "total", "failed",
                      "TypeError: unsupported operand type(s) for +: 'int' and 'str'")
    # the stage's cell shows the traceback of that run, with the user's line
    expect(total_cell.locator(".pipelite-run-error")).to_contain_text("total = sum(scaled)")
    shot(page, panel, f"{name}-failed")
    run_cell(page, last)
    expect(last.locator(".jp-OutputArea")).to_contain_text("RESULT total = 30 with SCALE = x")
    expect_readable(page, f"{name}, light theme, after a failure")
    if dark:
        use_theme(page, "JupyterLab Dark")
        try:
            expect_readable(page, f"{name}, dark theme")
            shot(page, panel, f"{name}-dark")
            shot(page, total_cell, f"{name}-dark-cell")
        finally:
            use_theme(page, "JupyterLab Light")  # the setting is the server's: restore it


TEN_STAGES = [
    "%%stage load_data\nraw = list(range(100))\nlabels = [i % 2 for i in raw]",
    "%%stage clean\nclean = [r for r in raw if r % 7]\nclean_labels = labels[:len(clean)]",
    "%%stage split\ntrain_x, test_x = clean[:60], clean[60:]\n"
    "train_y, test_y = clean_labels[:60], clean_labels[60:len(clean)]",
    "%%stage features\ntrain_f = [x * 2 for x in train_x]\ntest_f = [x * 2 for x in test_x]\n"
    "n_features = 1",
    "%%stage scale\nlo = min(train_f) * n_features\nhi = max(train_f + test_f)\n"
    "train_s = [(f - lo) / (hi - lo) for f in train_f]",
    "%%stage tune\nbest_c = max([0.1, 1.0, 10.0], key=lambda c: sum(train_s) * c % 3)",
    "%%stage train\nweights = [s * best_c for s in train_s]\nbias = sum(train_y) / 60",
    "%%stage evaluate\nscore = sum(weights) / len(weights) + bias\n"
    "test_size = len(test_f)",
    "%%stage explain\nimportance = sorted(weights)[-5:]",
    "%%stage report\nreport = f'score {score:.3f} on {test_size}; top {importance[-1]:.2f}'",
]


def open_and_run(jupyter, page, name: str, cells: list[str]) -> None:
    """Write ``cells`` as NAME/NAME.ipynb (the demo's kernel), open it in JupyterLab once its
    kernel is idle, and run every cell."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    folder = jupyter.root / name
    folder.mkdir(exist_ok=True)
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = json.loads(NOTEBOOK.read_text())["metadata"]["kernelspec"]
    nbformat.write(nb, folder / f"{name}.ipynb")
    page.goto(jupyter.url(f"lab/tree/{name}/{name}.ipynb") + "&reset")
    expect(page.locator(".jp-Notebook .jp-CodeCell")).to_have_count(len(cells))
    jupyter.wait_for_kernel(f"{name}/{name}.ipynb")
    expect(page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')).to_have_count(1)
    run_all_cells(page)


def test_a_ten_stage_graph_is_legible_in_the_panel(jupyter, page):
    """Item 5: stages only, edges labelled with the artifacts they carry, fit to the output's
    width, and text a person can read (11 px or more): ten stages deep, top to bottom."""
    try:
        open_and_run(jupyter, page, "ten", ["%load_ext pipelite", *TEN_STAGES,
                                            "%pipelite panel"])
        panel = page.locator(".pipelite-panel")
        expect(panel.locator(".pipelite-counts")).to_have_text("10 fresh")
        panel.locator(".pipelite-graph-toggle").click()
        # an untrusted notebook shows an SVG output as an <img>: read the SVG from it
        graph = panel.locator(".pipelite-graph svg, .pipelite-graph img").first
        expect(graph).to_be_visible()
        measured = graph.evaluate("""(el) => {
            let svg = el, scale = 1;
            if (el.tagName === 'IMG') {
                const [head, data] = el.src.split(',');
                const text = head.endsWith(';base64') ? atob(data) : decodeURIComponent(data);
                svg = new DOMParser().parseFromString(text, 'image/svg+xml').documentElement;
                // font sizes are in the viewBox's units, drawn at the image's width
                scale = el.getBoundingClientRect().width / svg.viewBox.baseVal.width;
            }
            const texts = [...svg.querySelectorAll('text')];
            const size = (t) => el.tagName === 'IMG'
                ? parseFloat(t.getAttribute('font-size')) * scale
                : t.getBoundingClientRect().height;
            return {nodes: svg.querySelectorAll('g.node').length,
                    width: el.getBoundingClientRect().width,
                    panel: el.closest('.pipelite-panel').getBoundingClientRect().width,
                    smallest: Math.min(...texts.map(size)),
                    labels: texts.map(t => t.textContent)};
        }""")
        # stages only (and the legend's five states): no artifact nodes
        assert measured["nodes"] == 10 + 5, measured
        assert measured["width"] <= measured["panel"], measured  # fits the output's width
        assert measured["smallest"] >= 10.5, measured  # legible: 11 px, and no shrinking
        assert "3 artifacts" in measured["labels"], measured["labels"]  # split -> ...
        shot(page, panel.locator(".pipelite-graph"), "graph-10-stages")
    except BaseException:
        page.screenshot(path=str(SHOTS / "graph-10-FAILED.png"))
        raise


POLICY_CELLS = [
    "%load_ext pipelite\nVERBOSE = False",
    "%%stage prices --expires 1d\nprices = [101.5, 99.0, 100.25]",
    "%%stage live --no-cache\nimport time\ntick = 1",
    "%%stage report --out-file out/report.html --ignore VERBOSE\nimport os\n"
    "if VERBOSE:\n    print('writing the report')\nos.makedirs('out', exist_ok=True)\n"
    "open('out/report.html', 'w').write(f'<p>{sum(prices)}</p>')",
    "%pipelite panel",
]


def test_the_panel_shows_policy_badges_and_file_outputs(jupyter, page):
    """Issue 12: no-cache and expiry badges next to the stage's name, and a file output with
    the place it is restored to, as a person sees them in JupyterLab."""
    try:
        open_and_run(jupyter, page, "policies", POLICY_CELLS)
        panel = page.locator(".pipelite-panel")
        expect(panel.locator(".pipelite-row-live .pipelite-policy-no-cache")).to_have_text(
            "no-cache")
        expect(panel.locator(".pipelite-row-prices .pipelite-policy-expires")).to_have_text(
            re.compile(r"expires in 2[34] h"))
        expect(panel.locator(".pipelite-row-report .pipelite-output-file")).to_contain_text(
            "report → out/report.html")
        expect(panel.locator(".pipelite-row-live .pipelite-badge")).to_contain_text("stale")
        expect(panel.locator(".pipelite-row-prices .pipelite-badge")).to_contain_text("fresh")
        shot(page, panel, "panel-policies")
    except BaseException:
        page.screenshot(path=str(SHOTS / "policies-FAILED.png"))
        raise


def run_or_record(page, jupyter, route: str, notebook: str, name: str,
                  dark: bool = False) -> None:
    try:
        run_the_scenario(page, jupyter, route, notebook, name, dark)
    except BaseException:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}-FAILED.png"))
        print(f"--- jupyter server log (tail) ---\n{jupyter.log()}")
        raise


def test_the_panel_in_jupyterlab_runs_a_stale_stage_and_binds_its_value(jupyter, page):
    run_or_record(page, jupyter, "lab/tree", f"lab/{NOTEBOOK.name}", "lab", dark=True)


def test_the_panel_in_the_notebook_7_interface(jupyter, page):
    run_or_record(page, jupyter, "notebooks", f"nb7/{NOTEBOOK.name}", "notebook7")
