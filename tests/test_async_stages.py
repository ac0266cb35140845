"""``async def`` stages (issue 12): function stages and ``run`` methods are awaited, with
``asyncio.run`` where no loop runs and in a helper thread's loop where one does; ``%%stage``
cells with a top-level ``await`` run in IPython's own loop."""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelite import Pipeline, StageOutputError, stage
from pipelite.present import user_frames
from tests.helpers import notebook, outcome, run_cell, send


def calls(log) -> list[str]:
    """The stages that really ran, from the lines they appended to ``log``."""
    return log.read_text().split() if log.exists() else []


def state(pipeline: Pipeline, name: str) -> str:
    (s,) = [s for s in pipeline.status() if s.name == name]
    return s.state


def helper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pipelite-async")]


# -- the core: awaited, stored, reused -------------------------------------------------------
def test_an_async_function_stage_is_awaited_and_its_result_stored_and_reused(pipeline,
                                                                             tmp_path):
    log = str(tmp_path / "ran.log")

    @stage
    async def fetch(*, url: str = "https://example.org"):
        await asyncio.sleep(0)
        with open(log, "a") as f:
            f.write("fetch\n")
        return {"page": f"<html>{url}</html>"}

    assert fetch.__pipelite_stage__.outputs == ("page",)  # from its literal return {...}
    assert pipeline.run("fetch")["page"] == "<html>https://example.org</html>"
    again = pipeline.run("fetch")
    assert again.executed == [] and again["page"] == "<html>https://example.org</html>"
    assert pipeline.load("page") == "<html>https://example.org</html>"
    assert calls(tmp_path / "ran.log") == ["fetch"]


def test_an_async_run_method_of_a_class_stage_is_awaited(pipeline, tmp_path):
    log = str(tmp_path / "ran.log")

    @stage(outputs="numbers")
    def numbers():
        return [1, 2, 3]

    @stage("scale")
    class Scale:
        def __init__(self, factor: int = 2):
            self.factor = factor

        async def run(self, numbers):
            await asyncio.sleep(0)
            with open(log, "a") as f:
                f.write("scale\n")
            return {"scaled": [n * self.factor for n in numbers]}

    assert Scale.__pipelite_stage__.outputs == ("scaled",)
    assert pipeline.run("scale")["scaled"] == [2, 4, 6]
    assert pipeline.run("scale").executed == []
    assert pipeline.run("scale", params={"scale": {"factor": 3}})["scaled"] == [3, 6, 9]
    assert calls(tmp_path / "ran.log") == ["scale", "scale"]


ASYNC_STAGE = """
    import asyncio

    @stage(outputs="y")
    async def f():
        await asyncio.sleep(0)  # yield to the loop once
        return 1
    """


def test_editing_the_body_of_an_async_stage_makes_it_stale(pipeline):
    ns = notebook()
    run_cell(ASYNC_STAGE, ns)
    pipeline.run("f")
    run_cell(ASYNC_STAGE.replace("return 1", "return 2"), ns)
    (s,) = pipeline.status()
    assert s.state == "stale" and any("code" in r for r in s.reasons), s.reasons
    assert pipeline.run("f")["y"] == 2


def test_editing_a_comment_of_an_async_stage_keeps_it_fresh(pipeline):
    ns = notebook()
    run_cell(ASYNC_STAGE, ns)
    pipeline.run("f")
    run_cell(ASYNC_STAGE.replace("# yield to the loop once", "# let others run\n"), ns)
    assert state(pipeline, "f") == "fresh"


def test_an_error_inside_an_async_stage_is_the_users_own_with_the_users_frames(pipeline):
    async def lookup(key):
        await asyncio.sleep(0)
        raise KeyError(key)

    @stage(outputs="value")
    async def broken():
        return await lookup("missing")

    with pytest.raises(KeyError) as caught:
        pipeline.run("broken")
    shown = traceback.extract_tb(user_frames(caught.value.__traceback__))
    assert [f.name for f in shown] == ["broken", "lookup"]
    assert not caught.value.__context__  # no "during handling of another exception"
    assert state(pipeline, "broken") == "failed"


def test_a_plain_def_returning_a_coroutine_is_a_clear_error_and_the_coroutine_is_closed(
        pipeline):
    async def download():
        return [1, 2]

    @stage(outputs="data")
    def fetch():
        return download()  # the missing await

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(StageOutputError) as caught:
            pipeline.run("fetch")
        message = str(caught.value)
        del caught
        gc.collect()
    assert message.startswith("stage 'fetch' returned a coroutine instead of its result")
    assert "await it" in message and "async def" in message
    assert not [w for w in seen if "never awaited" in str(w.message)]


def test_a_cell_stage_with_top_level_await_runs_without_a_host(pipeline):
    from pipelite import CellStage, Registry

    registry = Registry()
    registry.add(CellStage("cell", "import asyncio\nawait asyncio.sleep(0)\nv = 7\n", {}))
    assert Pipeline(pipeline.store, registry=registry).run("cell")["v"] == 7


def test_the_analysis_of_a_cell_that_awaits_finds_its_reads_and_outputs():
    from pipelite._cellcode import analyze

    found = analyze("rows = await fetch(URL)\nasync with pool as conn:\n"
                    "    total = await conn.count()\nasync for page in pages():\n"
                    "    last = page\n")
    assert found.outputs == ("rows", "total", "last")  # not conn, page: working names
    assert set(found.free) == {"fetch", "URL", "pool", "pages"}


# -- where the coroutine runs ----------------------------------------------------------------
def test_a_run_from_inside_a_running_event_loop_works(pipeline):
    @stage(outputs="loop_ok")
    async def probe():
        await asyncio.sleep(0)
        return True

    async def main():
        return pipeline.run("probe")  # asyncio.run would refuse: a loop is running here

    assert asyncio.run(main())["loop_ok"] is True
    assert helper_threads() == []


def test_an_async_stage_called_inside_a_running_loop_runs_in_a_helper_thread(pipeline):
    @stage(outputs="where")
    async def where():
        return threading.current_thread().name

    async def main():
        return pipeline.run("where")

    assert asyncio.run(main())["where"].startswith("pipelite-async")
    assert helper_threads() == []


@pytest.mark.timeout(60)  # (it hung: its TimeoutError read as the wait's own)
def test_a_timeout_error_inside_an_async_stage_in_a_running_loop_is_raised(pipeline):
    @stage(outputs="never")
    async def slow_service():
        await asyncio.wait_for(asyncio.sleep(10), 0.01)

    async def main():
        return pipeline.run("slow_service")

    with pytest.raises(TimeoutError):
        asyncio.run(main())


def _interrupt_once(started: threading.Event) -> None:
    """Ctrl-C, once the stage has started: a real SIGINT to the main thread, which wakes it
    from a wait for I/O (``_thread.interrupt_main`` would not, until the wait ends). A moment
    later, as a person would: the main thread is then waiting, not about to."""
    def fire():
        if started.wait(20):
            time.sleep(0.2)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=fire, daemon=True).start()


needs_signals = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX signals")


@needs_signals
def test_interrupting_an_async_stage_inside_a_running_loop_leaves_no_loop_or_thread(
        pipeline):
    started, seen = threading.Event(), {}

    @stage(outputs="never")
    async def hang():
        seen["loop"] = asyncio.get_running_loop()
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            seen["cleaned_up"] = True

    async def main():
        return pipeline.run("hang")

    loop = asyncio.new_event_loop()  # run_until_complete: Ctrl-C raises right where it lands
    try:
        _interrupt_once(started)
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(main())
    finally:
        loop.close()
    assert seen["cleaned_up"] and seen["loop"].is_closed()
    assert helper_threads() == []
    assert state(pipeline, "hang") != "fresh"


@needs_signals
def test_interrupting_an_async_stage_run_with_asyncio_run_closes_its_loop(pipeline):
    started, seen = threading.Event(), {}

    @stage(outputs="never")
    async def hang():
        seen["loop"] = asyncio.get_running_loop()
        started.set()
        try:
            await asyncio.sleep(2)
        finally:
            seen["cleaned_up"] = True

    # (asyncio.run's own SIGINT handler may miss a signal that lands just before its loop
    # waits, until the loop next wakes: hence a short sleep, not a long one)
    _interrupt_once(started)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run("hang")
    assert seen["cleaned_up"] and seen["loop"].is_closed()
    assert helper_threads() == []


# -- executors -------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:closure 'barrier'")  # a Barrier has no content to hash
def test_async_stages_run_on_a_thread_pool(store_dir):
    # both wait for each other: this only finishes if they run at the same time
    barrier = threading.Barrier(2, timeout=20)

    @stage(outputs="left")
    async def left():
        await asyncio.to_thread(barrier.wait)
        return 1

    @stage(outputs="right")
    async def right():
        await asyncio.to_thread(barrier.wait)
        return 2

    @stage(outputs="both")
    async def both(left, right):
        return left + right

    with ThreadPoolExecutor(2) as pool:
        result = Pipeline(store_dir, executor=pool).run("both")
    assert result["both"] == 3
    assert sorted(result.executed) == ["both", "left", "right"]
    assert Pipeline(store_dir).run("both").executed == []


@stage(outputs="pid")
async def worker_pid():
    await asyncio.sleep(0)
    return os.getpid()


def test_an_async_stage_runs_on_a_dask_local_cluster(store_dir, clean_registry, monkeypatch):
    distributed = pytest.importorskip("distributed")
    main = sys.modules["__main__"]
    if not hasattr(main, "__spec__"):  # multiprocessing reads it; an IPython one may lack it
        monkeypatch.setattr(main, "__spec__", None, raising=False)
    clean_registry.add(worker_pid.__pipelite_stage__)  # the autouse fixture cleared it
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        result = Pipeline(store_dir, executor=client).run("worker_pid")
        workers = set(client.run(os.getpid).values())
    assert result["pid"] in workers and result["pid"] != os.getpid()


# -- %%stage cells with a top-level await ----------------------------------------------------
FETCH = """\
%%stage fetch
import asyncio
await asyncio.sleep(0)  # as a download would
open(LOG, "a").write("fetch\\n")
print("fetched")
data = [1, 2, 3]
"""


def shell_run(ip, cell: str):
    """Run ``cell`` as a notebook would: (success, what it printed)."""
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        result = ip.run_cell(cell)
    return result.success, cap.stdout + cap.stderr


def test_a_stage_cell_with_top_level_await_runs_and_then_loads_from_the_store(ip, tmp_path):
    ok, out = shell_run(ip, FETCH)
    assert ok, out
    assert "fetched" in out and "[pipelite] fetch: ran in" in out
    assert ip.user_ns["data"] == [1, 2, 3]
    del ip.user_ns["data"]
    ok, out = shell_run(ip, FETCH)
    assert ok, out
    assert "fetched" in out and "[pipelite] fetch: loaded from store" in out  # replayed
    assert ip.user_ns["data"] == [1, 2, 3]
    assert calls(tmp_path / "ran.log") == ["fetch"]


@pytest.mark.filterwarnings("ignore::pipelite.PipeliteWarning")  # a queue has no content
def test_a_stage_cell_with_top_level_await_is_awaited_in_ipythons_own_loop(ip):
    """A queue made (and fed later) on IPython's loop by an earlier cell: the stage cell's
    wait on it ends only if the cell runs in that loop while the loop is free."""
    ok, out = shell_run(ip, "import asyncio\nawait asyncio.sleep(0)\n"
                            "LOOP_ID = id(asyncio.get_running_loop())\nq = asyncio.Queue()\n"
                            "asyncio.get_running_loop().call_later(0.1, q.put_nowait, 5)\n")
    assert ok, out
    ok, out = shell_run(ip, "%%stage take -o x same_loop\n"
                            "x = await asyncio.wait_for(q.get(), 10)\n"
                            "same_loop = id(asyncio.get_running_loop()) == LOOP_ID\n")
    assert ok, out
    assert ip.user_ns["x"] == 5 and ip.user_ns["same_loop"] is True


def test_the_last_expression_of_a_stage_cell_may_await_too(ip):
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        result = ip.run_cell("%%stage answer\nimport asyncio\n"
                             "async def ask():\n    return 42\nv = 1\nawait ask()\n")
    assert result.success, cap.stdout
    assert [o.data["text/plain"] for o in cap.outputs] == ["42"]  # shown, as in any cell


def test_editing_an_awaiting_stage_cell_makes_it_stale_and_a_comment_does_not(ip, tmp_path):
    assert shell_run(ip, FETCH)[0]
    ok, out = shell_run(ip, FETCH.replace("# as a download would", "# comment edited"))
    assert ok and "loaded from store" in out, out
    ok, out = shell_run(ip, FETCH.replace("data = [1, 2, 3]", "data = [1, 2, 3, 4]"))
    assert ok and "[pipelite] fetch: ran in" in out and "code changed" in out, out
    assert ip.user_ns["data"] == [1, 2, 3, 4]
    assert calls(tmp_path / "ran.log") == ["fetch", "fetch"]


def test_an_error_in_an_awaiting_stage_cell_shows_the_users_lines(ip):
    ok, out = shell_run(ip, "%%stage boom\nimport asyncio\nawait asyncio.sleep(0)\n"
                            "x = 1 / 0\n")
    assert not ok
    assert "ZeroDivisionError" in out and "----> 4 x = 1 / 0" in out
    assert "pipelite" not in out.split("ZeroDivisionError")[1].split("\n", 2)[1]
    assert "site-packages" not in out and "wt-async" not in out  # no frames of ours
    import pipelite_ipy

    (s,) = pipelite_ipy.current_session().pipeline.status()
    assert s.state == "failed"


@pytest.mark.timeout(60)  # (it hung: its TimeoutError read as the wait's own)
def test_a_timeout_error_in_an_awaiting_stage_cell_is_shown(ip):
    ok, out = shell_run(ip, "%%stage late\nimport asyncio\n"
                            "await asyncio.wait_for(asyncio.sleep(10), 0.01)\nv = 1\n")
    assert not ok and "TimeoutError" in out, out


SLOW_CELL = ("import asyncio\nopen('started', 'w').close()\ntry:\n    await asyncio.sleep(60)\n"
             "finally:\n    open('cleaned', 'w').close()\nv = 1\n")


@needs_signals
def test_interrupting_an_awaiting_stage_cell_cancels_it_and_leaves_no_thread(ip, tmp_path):
    started = threading.Event()

    def watch():
        deadline = time.monotonic() + 20
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        started.set()

    threading.Thread(target=watch, daemon=True).start()
    _interrupt_once(started)
    ok, out = shell_run(ip, "%%stage slow\n" + SLOW_CELL)
    assert not ok and "RunCancelled" in out, out
    assert "----> 5     await asyncio.sleep(60)" in out  # where the cell was stopped
    assert (tmp_path / "cleaned").exists()  # the cell's task was cancelled, on its loop
    assert [t for t in threading.enumerate() if t.name.startswith("pipelite-")] == []
    import pipelite_ipy

    (s,) = pipelite_ipy.current_session().pipeline.status()
    assert s.state == "missing"  # cancelled: nothing stored, no failure recorded
    assert shell_run(ip, "w = 2")[0]  # the shell carries on


def test_cancelling_an_awaiting_cells_coroutine_cancels_its_run(ip, tmp_path):
    """ipykernel's way to interrupt an awaiting cell: it cancels the cell's task."""
    import pipelite_ipy
    from pipelite.errors import RunCancelled

    assert shell_run(ip, "%%stage slow --define\n" + SLOW_CELL)[0]
    session = pipelite_ipy.current_session()

    async def main():
        task = asyncio.ensure_future(session.run_cell_stage_async("slow"))
        while not (tmp_path / "started").exists():
            await asyncio.sleep(0.01)
        task.cancel()
        await task

    with pytest.raises(RunCancelled):  # (a KeyboardInterrupt: out of the loop, as Ctrl-C)
        asyncio.run(main())
    assert (tmp_path / "cleaned").exists()
    assert [t for t in threading.enumerate() if t.name.startswith("pipelite-")] == []
    (s,) = session.pipeline.status()
    assert s.state == "missing"


def test_an_awaiting_stage_cell_checks_the_badges_once(ip, monkeypatch):
    """Its run is in a thread, as a panel run is, but it is the cell's own: the badges are
    checked once, after the cell, as for any stage cell."""
    import pipelite_ipy

    session = pipelite_ipy.current_session()
    session.badges = True
    checks = []
    real = session.pipeline.status
    monkeypatch.setattr(session.pipeline, "status", lambda *a, **k: checks.append(1) or real())
    ok, out = shell_run(ip, FETCH)
    assert ok, out
    assert len(checks) == 1


def test_with_autoawait_off_an_awaiting_stage_cell_runs_on_a_loop_of_its_own(ip):
    ip.run_line_magic("autoawait", "off")
    try:
        ok, out = shell_run(ip, FETCH)
    finally:
        ip.run_line_magic("autoawait", "on")
    assert ok, out
    assert ip.user_ns["data"] == [1, 2, 3]


def test_pipelite_run_reruns_an_awaiting_stage_cell(ip, tmp_path):
    assert shell_run(ip, FETCH)[0]
    ok, out = shell_run(ip, "%pipelite run fetch --force")
    assert ok, out
    assert calls(tmp_path / "ran.log") == ["fetch", "fetch"]


def test_an_awaiting_stage_cell_runs_on_a_dask_cluster_with_asyncio_run(ip, monkeypatch):
    distributed = pytest.importorskip("distributed")
    import pipelite_ipy

    main = sys.modules["__main__"]
    if not hasattr(main, "__spec__"):  # multiprocessing reads it; an IPython one may lack it
        monkeypatch.setattr(main, "__spec__", None, raising=False)
    session = pipelite_ipy.current_session()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        session.pipeline.executor = client
        try:
            ok, out = shell_run(ip, "%%stage remote\nimport asyncio, os\n"
                                    "await asyncio.sleep(0)\npid = os.getpid()\n")
        finally:
            session.pipeline.executor = None
    assert ok, out
    assert "ran on the executor's worker" in out and ip.user_ns["pid"] != os.getpid()


# -- in a real kernel ------------------------------------------------------------------------
def run_notebook(tmp_path, cells: list[str]):
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb.cells


def test_in_a_kernel_an_awaiting_stage_cell_runs_then_loads_from_the_store(tmp_path):
    from tests.helpers import printed

    cells = run_notebook(tmp_path, [
        f"%load_ext pipelite\nLOG = {str(tmp_path / 'ran.log')!r}", FETCH, FETCH,
        "print(data)"])
    assert "[pipelite] fetch: ran in" in printed(cells[1])
    assert "fetched" in printed(cells[2])
    assert "[pipelite] fetch: loaded from store" in printed(cells[2])
    assert printed(cells[3]) == "[1, 2, 3]\n"
    assert calls(tmp_path / "ran.log") == ["fetch"]


def test_in_a_kernel_an_awaiting_stage_cell_runs_in_the_kernels_loop(tmp_path):
    """An earlier (plain) cell makes a queue on the kernel's loop and feeds it later from
    that loop: the stage cell's wait ends only if it runs in the kernel's loop, free."""
    from tests.helpers import printed

    cells = run_notebook(tmp_path, [
        "%load_ext pipelite\nimport asyncio\nLOOP_ID = id(asyncio.get_running_loop())\n"
        "q = asyncio.Queue()\nasyncio.get_running_loop().call_later(0.2, q.put_nowait, 5)",
        "%%stage take -o x same_loop\nx = await asyncio.wait_for(q.get(), 10)\n"
        "same_loop = id(asyncio.get_running_loop()) == LOOP_ID",
        "print(x, same_loop)"])
    assert printed(cells[2]) == "5 True\n", printed(cells[1])


@needs_signals
def test_kernel_interrupt_cancels_an_awaiting_stage_cell_and_ends_its_run(kernel_manager,
                                                                          tmp_path):
    """Kernel -> Interrupt cancels the cell's coroutine (ipykernel's way for async cells):
    the run in its thread is cancelled, its task on the kernel's loop ends, nothing is
    stored, and the kernel carries on."""
    km, kc = kernel_manager
    assert outcome(kc, send(kc, "%load_ext pipelite"))[0] == "ok"
    msg_id = send(kc, "%%stage slow\n" + SLOW_CELL)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the stage did not start"
        time.sleep(0.02)
    time.sleep(0.2)
    km.interrupt_kernel()
    status, text = outcome(kc, msg_id)
    assert status == "error" and "RunCancelled" in text, text
    assert (tmp_path / "cleaned").exists()
    status, text = outcome(kc, send(kc, (
        "import threading, pipelite_ipy\n"
        "print([t.name for t in threading.enumerate() if t.name.startswith('pipelite-')])\n"
        "print([s.state for s in pipelite_ipy.current_session().pipeline.status()])")))
    assert status == "ok" and text == "[]\n['missing']\n", text
