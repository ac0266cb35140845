"""Independent stages run in parallel on an executor: a thread pool, or a Dask cluster."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pipelite import Pipeline, StageSubmitError, stage


@pytest.fixture(autouse=True)
def main_module_with_a_spec(monkeypatch):
    """Dask starts workers with multiprocessing, which reads ``__main__.__spec__``; an IPython
    shell made earlier in the session (the magics' tests) leaves a ``__main__`` without one."""
    import sys

    main = sys.modules["__main__"]
    if not hasattr(main, "__spec__"):
        monkeypatch.setattr(main, "__spec__", None, raising=False)


@pytest.mark.filterwarnings("ignore:closure 'barrier'")  # a Barrier has no content to hash
def test_independent_stages_overlap_on_a_thread_pool(store_dir):
    # both stages wait for each other: this only finishes if they run at the same time
    barrier = threading.Barrier(2, timeout=20)

    @stage(outputs="left")
    def left():
        barrier.wait()
        return 1

    @stage(outputs="right")
    def right():
        barrier.wait()
        return 2

    @stage(outputs="both")
    def join(left, right):
        return left + right

    with ThreadPoolExecutor(2) as pool:
        result = Pipeline(store_dir, executor=pool).run("join")
    assert result["both"] == 3
    assert sorted(result.executed) == ["join", "left", "right"]
    assert result.executed[-1] == "join"
    assert Pipeline(store_dir).run("join").executed == []


def test_a_failure_on_the_executor_is_raised_after_in_flight_stages_finish(store_dir):
    @stage(outputs="ok")
    def fine():
        return 1

    @stage(outputs="bad")
    def broken():
        raise ValueError("broken stage")

    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(ValueError, match="broken stage"):
            Pipeline(store_dir, executor=pool).run(["fine", "broken"])
    states = {s.name: s.state for s in Pipeline(store_dir).status()}
    assert states == {"fine": "fresh", "broken": "failed"}


@stage(outputs="square")
def square():
    return np.arange(5) ** 2


@stage(outputs="cube")
def cube():
    return np.arange(5) ** 3


@stage(outputs="total")
def total(square, cube):
    return int(square.sum() + cube.sum())


def test_stages_run_on_a_dask_local_cluster_and_workers_write_the_shared_store(store_dir):
    distributed = pytest.importorskip("distributed")
    from pipelite import REGISTRY

    for fn in (square, cube, total):  # the autouse fixture cleared the registry
        REGISTRY.add(fn.__pipelite_stage__)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        result = Pipeline(store_dir, executor=client).run("total")
        worker_pids = set(client.run(os.getpid).values())
    assert result["total"] == 30 + 100
    assert sorted(result.executed) == ["cube", "square", "total"]
    # the records were written by the workers, into the shared store
    again = Pipeline(store_dir).run("total")
    assert again.executed == [] and again["total"] == 130
    assert len(worker_pids) == 2


# -- a stage the executor will not take (issue 11) -------------------------------------------
def test_a_shut_down_pool_fails_the_stage_instead_of_leaving_it_running(store_dir):
    from pipelite import StageSubmitError

    @stage(outputs="v")
    def one():
        return 1

    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    pipeline = Pipeline(store_dir, executor=pool)
    with pytest.raises(StageSubmitError, match=r"stage 'one' could not be sent to the "
                                               r"executor \(RuntimeError: cannot schedule"):
        pipeline.run("one")
    (status,) = pipeline.status()
    assert status.state == "missing"  # not "running" forever


NOTEBOOK_CELL = """
import threading
LOCK = threading.Lock()  # a global no pickle can send to another process

def locked():
    with LOCK:
        return {"v": 1}
"""


def test_an_unpicklable_global_of_a_notebook_stage_names_itself_on_a_dask_cluster(store_dir):
    """A notebook's functions live in __main__: they are sent by value, with the globals they
    read. One that cannot be pickled fails the stage, named, instead of leaving it running."""
    distributed = pytest.importorskip("distributed")
    from pipelite import StageSubmitError

    namespace: dict = {"__name__": "__main__"}
    exec(NOTEBOOK_CELL, namespace)  # noqa: S102 - as a notebook cell would define it
    stage(outputs="v")(namespace["locked"])
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        pipeline = Pipeline(store_dir, executor=client)
        with pytest.raises(StageSubmitError, match="stage 'locked' could not be sent to the "
                                                   "executor: its global 'LOCK' \\(lock\\) "
                                                   "cannot be pickled"):
            pipeline.run("locked")
        assert [s.state for s in pipeline.status()] == ["missing"]  # not left running


def test_an_unpicklable_closure_variable_is_named_too(store_dir):
    from pipelite._execute import submit_error

    lock = threading.Lock()

    @stage(outputs="v")
    def guarded():
        with lock:
            return 1

    from pipelite import REGISTRY

    err = submit_error(REGISTRY.get("guarded"), {}, TypeError("cannot pickle '_thread.lock'"))
    assert "its closure variable 'lock' (lock) cannot be pickled" in str(err)


def _hide_probes() -> None:
    """On a worker: behave as a machine that does not have the client's folders."""
    import pipelite._execute as ex

    ex.read_probe = lambda path: None


def test_a_local_store_the_workers_cannot_see_is_said_before_anything_runs(store_dir):
    distributed = pytest.importorskip("distributed")
    from pipelite import REGISTRY, StoreLocationError

    for fn in (square, cube, total):
        REGISTRY.add(fn.__pipelite_stage__)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        client.run(_hide_probes)
        pipeline = Pipeline(store_dir, executor=client)
        with pytest.raises(StoreLocationError, match="workers cannot see the store"):
            pipeline.run("total")
        assert {s.state for s in pipeline.status()} == {"missing"}  # nothing ran
        assert not list((store_dir / "tmp").glob("probe-*"))  # the probe is cleaned up


FAILING_CELL = '''
def helper(x):
    return x / 0

def broken():
    return {"v": helper(1)}
'''


def test_a_notebook_stage_failing_on_a_worker_says_where_in_the_cell(store_dir):
    """cloudpickle sends notebook code as "<dynamic-code>", so Dask's traceback has neither
    the cell nor its lines: the error's note maps the worker's frames back to them."""
    import linecache

    distributed = pytest.importorskip("distributed")
    cell = "/tmp/ipykernel_0/4242.py"  # as ipykernel names a cell's code
    linecache.cache[cell] = (len(FAILING_CELL), None, FAILING_CELL.splitlines(True), cell)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(FAILING_CELL, cell, "exec"), namespace)  # noqa: S102 - a notebook cell
    stage(outputs="v")(namespace["broken"])
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        with pytest.raises(ZeroDivisionError) as caught:
            Pipeline(store_dir, executor=client).run("broken")
    note = "\n".join(caught.value.__notes__)
    assert f'File "{cell}", line 6, in broken\n    return {{"v": helper(1)}}' in note
    assert f'File "{cell}", line 3, in helper\n    return x / 0' in note


def test_a_cell_is_sent_with_the_globals_it_reads_and_an_unpicklable_one_is_named():
    from pipelite import CellStage
    from pipelite._execute import submit_error

    cell = CellStage("cell", "with LOCK:\n    x = SCALE", {"LOCK": threading.Lock(),
                                                        "SCALE": 3, "unused": object()})
    sent = cell.for_worker()
    assert set(sent.values) == {"LOCK", "SCALE"}  # what the cell reads, nothing else
    err = submit_error(sent, {}, TypeError("Could not serialize object"))
    assert str(err).startswith("stage 'cell' could not be sent to the executor: its global "
                               "'LOCK' (lock) cannot be pickled")


def test_an_unpicklable_parameter_is_named(store_dir):
    """A parameter value that cannot be pickled (a lock given as a run parameter) fails the
    stage at once, naming the parameter, on a Dask cluster."""
    distributed = pytest.importorskip("distributed")

    @stage(outputs="v")
    def uses(*, guard=None):
        return 1

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        pipeline = Pipeline(store_dir, executor=client,
                            params={"uses": {"guard": threading.Lock()}})
        with pytest.raises(StageSubmitError) as caught:
            pipeline.run("uses")
    assert "parameter 'guard' (lock) cannot be pickled" in str(caught.value)
    assert pipeline.status()[0].state != "running"


def test_a_process_pool_that_cannot_pickle_a_local_stage_says_so(store_dir):
    """A process pool pickles with the standard pickle: a stage defined inside a function is
    refused by its feeder thread, after submit() returned. That is a StageSubmitError saying
    why, not a raw AttributeError, and the stage is not left running."""
    from concurrent.futures import ProcessPoolExecutor

    @stage(outputs="v")
    def local_stage():
        return 1

    with ProcessPoolExecutor(1) as pool:
        pipeline = Pipeline(store_dir, executor=pool)
        with pytest.raises(StageSubmitError) as caught:
            pipeline.run("local_stage")
    assert "standard pickle" in str(caught.value) and "Dask client" in str(caught.value)
    assert pipeline.status()[0].state != "running"
