"""``%%stage`` cells on a Dask cluster (issue 11): with the session's executor set to a
``dask.distributed`` client, a cell runs on a worker process, with the values of the globals
it reads and its notebook helpers sent along; its outputs, its definitions and what it printed
come back to the kernel as for a loaded cell. A real ``InteractiveShell`` and a
``LocalCluster`` with process workers."""
from __future__ import annotations

import os
import sys
import threading

import pytest

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    main = sys.modules["__main__"]
    had = hasattr(main, "__spec__")
    if not had:  # multiprocessing reads it; an IPython __main__ may lack it
        main.__spec__ = None  # type: ignore[attr-defined]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as c:
        yield c
    if not had:  # IPython's reset may have emptied it meanwhile (its namespace is the shell's)
        vars(main).pop("__spec__", None)


@pytest.fixture
def on_cluster(ip, client):
    import pipelite_ipy

    session = pipelite_ipy.current_session()
    session.pipeline.executor = client
    yield ip
    session.pipeline.executor = None


def _cell(ip, text: str):
    result = ip.run_cell(text)
    return result


def test_a_cell_runs_on_a_worker_and_its_outputs_come_back(on_cluster, capsys):
    ip = on_cluster
    ip.run_cell("import os\nSCALE = 3\ndef helper(x):\n    return x * SCALE\n")
    result = _cell(ip, "%%stage numbers\n"
                       "pid = os.getpid()\n"
                       "values = [helper(i) for i in range(4)]\n"
                       "print('computed on the worker', len(values))\n"
                       "def twice(x):\n    return 2 * x\n")
    assert result.error_in_exec is None, result.error_in_exec
    out = capsys.readouterr().out
    assert ip.user_ns["values"] == [0, 3, 6, 9]
    assert ip.user_ns["pid"] != os.getpid()  # it ran in the worker's process
    assert "computed on the worker 4" in out  # its print, shown in the cell
    assert "ran on the executor's worker" in out
    assert ip.user_ns["twice"](5) == 10  # its definitions run in the kernel too
    # a downstream cell gets the upstream's output as its input, on the worker
    result = _cell(ip, "%%stage total\ntotal = sum(values)\n")
    assert result.error_in_exec is None, result.error_in_exec
    assert ip.user_ns["total"] == 18
    capsys.readouterr()
    # nothing changed: loaded, not recomputed; a changed global makes it stale again
    _cell(ip, "%%stage numbers\n"
              "pid = os.getpid()\n"
              "values = [helper(i) for i in range(4)]\n"
              "print('computed on the worker', len(values))\n"
              "def twice(x):\n    return 2 * x\n")
    assert "loaded from store" in capsys.readouterr().out
    ip.run_cell("SCALE = 10")
    _cell(ip, "%%stage total\ntotal = sum(values)\n")
    assert ip.user_ns["values"] == [0, 10, 20, 30]  # the upstream cell ran there, bound here
    assert ip.user_ns["total"] == 60


def test_a_cells_last_expression_and_stderr_are_shown(on_cluster, capsys):
    ip = on_cluster
    result = _cell(ip, "%%stage shown\nimport sys\nx = 41\nprint('careful', file=sys.stderr)\n"
                       "x + 1\n")
    assert result.error_in_exec is None, result.error_in_exec
    captured = capsys.readouterr()
    assert "careful" in captured.err
    assert "42" in captured.out


def test_a_cell_reading_an_unpicklable_global_names_it(on_cluster, capsys):
    ip = on_cluster
    ip.run_cell("import threading\nLOCK = threading.Lock()")
    result = _cell(ip, "%%stage locked\nwith LOCK:\n    y = 1\n")
    assert result.error_in_exec is not None
    text = capsys.readouterr()
    shown = text.out + text.err
    assert "stage 'locked' could not be sent to the executor" in shown
    assert "global 'LOCK' (lock) cannot be pickled" in shown
    assert "Traceback" not in shown


def test_a_cell_failing_on_a_worker_shows_its_cell_and_line(on_cluster, capsys):
    ip = on_cluster
    result = _cell(ip, "%%stage broken\na = 1\nb = a / 0\n")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    text = capsys.readouterr()
    shown = text.out + text.err
    assert "b = a / 0" in shown  # the user's line, from the cell
    assert "<dynamic-code>" not in shown
    from pipelite_ipy import current_session

    assert current_session().pipeline.status()[0].state in ("failed",)


def test_a_thread_pool_still_runs_a_cell_in_the_kernels_namespace(ip):
    from concurrent.futures import ThreadPoolExecutor

    import pipelite_ipy

    session = pipelite_ipy.current_session()
    with ThreadPoolExecutor(1) as pool:
        session.pipeline.executor = pool
        try:
            ip.run_cell("%%stage here\nimport threading\nmine = threading.get_ident()\n"
                        "scratch = 'kept'\nz = 1\n")
        finally:
            session.pipeline.executor = None
    assert ip.user_ns["scratch"] == "kept"  # not only outputs: it ran in this namespace
    assert ip.user_ns["mine"] != threading.get_ident()
