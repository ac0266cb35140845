"""Stopping a run on request (``Pipeline.run(cancel=event)``, the panel's Cancel): no further
stage starts, a stage interrupted in its thread stores nothing and records no failure, and its
state is what it was before."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelite import InvalidArgumentError, StageEvent, stage, subscribe
from pipelite.errors import RunCancelled
from pipelite_ipy._background import BackgroundRun

FACTOR = {"value": 2}


@pytest.fixture
def events():
    seen: list[StageEvent] = []
    unsubscribe = subscribe(seen.append)
    yield seen
    unsubscribe()


def stored_files(root):
    """Every file in the store but lock files (one per fingerprint that was computed) and use
    stamps (``used/``: a load notes when it read a result)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock")
                  and p.relative_to(root).parts[0] != "used")


def kinds(events, stage_name):
    return [e.kind for e in events if e.stage == stage_name]


def test_a_cancel_set_before_a_stage_stops_the_run_there(pipeline, events):
    @stage(outputs="a")
    def first():
        cancel.set()  # e.g. the Cancel button, clicked while this stage ran
        return 1

    @stage(outputs="b")
    def second(a):
        return a + 1

    cancel = threading.Event()
    with pytest.raises(RunCancelled, match="before stage 'second'"):
        pipeline.run("second", cancel=cancel)
    assert [e.stage for e in events if e.kind == "started"] == ["first"]
    states = {s.name: s.state for s in pipeline.status()}
    assert states == {"first": "fresh", "second": "missing"}  # what ran before is kept
    assert kinds(events, "second") == []  # it never started
    assert [e.kind for e in events if e.stage is None] == ["run_started", "run_finished"]


def test_a_stage_interrupted_in_its_thread_stores_nothing_and_keeps_its_state(
        pipeline, store_dir, events):
    started, release = threading.Event(), threading.Event()

    @stage(outputs="v")
    def slow():
        started.set()
        while not release.is_set():  # Python code running: an interrupt lands here
            release.wait(0.01)
        return FACTOR["value"]

    release.set()
    FACTOR["value"] = 2
    assert pipeline.run("slow")["v"] == 2  # a stored result, from before
    release.clear()
    started.clear()
    FACTOR["value"] = 3  # a global it reads changed: stale, it will run again
    assert {s.name: s.state for s in pipeline.status()} == {"slow": "stale"}
    before = stored_files(store_dir)

    run = BackgroundRun(lambda cancel: pipeline.run("slow", cancel=cancel)).start()
    assert started.wait(10)
    run.stage = "slow"  # (the panel learns it from the started event)
    run.cancel()
    run.join()
    assert isinstance(run.error, RunCancelled) and run.cancelled
    assert run.error.stage == "slow"
    status = {s.name: s for s in pipeline.status()}["slow"]
    assert status.state == "stale" and status.error is None  # no failure recorded
    FACTOR["value"] = 2
    assert pipeline.load("v") == 2  # the result from before is still there
    assert stored_files(store_dir) == before  # no object, record or failure
    assert kinds(events, "slow")[-1] == "cancelled"
    assert "failed" not in kinds(events, "slow")


def test_a_cancel_with_an_executor_submits_nothing_more(pipeline):
    @stage(outputs="a")
    def one():
        cancel.set()
        return 1

    @stage(outputs="b")
    def two(a):
        return a

    cancel = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        pipeline.executor = pool
        with pytest.raises(RunCancelled):
            pipeline.run("two", cancel=cancel)
    assert {s.name: s.state for s in pipeline.status()} == {"one": "fresh", "two": "missing"}


def test_cancel_must_be_an_event(pipeline):
    @stage(outputs="a")
    def one():
        return 1

    with pytest.raises(InvalidArgumentError, match="threading.Event"):
        pipeline.run("one", cancel=True)


def test_a_keyboard_interrupt_that_is_not_a_cancel_is_still_recorded(pipeline):
    """Ctrl-C in a script is a failure the user sees (``failed: KeyboardInterrupt``); only a
    requested cancel leaves no trace."""
    @stage(outputs="a")
    def one():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.run("one")
    assert {s.name: s.state for s in pipeline.status()} == {"one": "failed"}
