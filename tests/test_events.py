"""Stage events (pipelite/events.py): who hears them, what a run announces and in which order,
and that a listener can never break a run."""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelite import Pipeline, stage, subscribe


@pytest.fixture
def chain(two_stages):
    """a -> b -> c."""

    @stage(outputs="z")
    def c(y):
        return y * 10


@pytest.fixture
def heard():
    """Every event while the test runs, as (kind, stage, index, total)."""
    seen: list = []
    unsubscribe = subscribe(lambda e: seen.append((e.kind, e.stage, e.index, e.total)))
    yield seen
    unsubscribe()


# -- subscribing -------------------------------------------------------------------------------
def test_subscribing_something_that_cannot_be_called_is_refused():
    from pipelite import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="subscribe\\(\\) takes a function"):
        subscribe(5)


def test_an_unsubscribed_listener_hears_nothing_more(pipeline, chain):
    seen = []
    unsubscribe = subscribe(seen.append)
    pipeline.run("a")
    count = len(seen)
    assert count > 0
    unsubscribe()
    pipeline.run("b")
    assert len(seen) == count


def test_unsubscribing_twice_is_harmless(pipeline, chain):
    unsubscribe = subscribe(lambda e: None)
    unsubscribe()
    unsubscribe()
    assert pipeline.run("a")["x"] == 1


def test_every_listener_hears_every_pipeline_in_the_process_with_its_store(tmp_path, chain):
    first, second = Pipeline(tmp_path / "one"), Pipeline(tmp_path / "two")
    stores = []
    unsubscribe = subscribe(lambda e: e.kind == "started" and stores.append((e.stage, e.store)))
    try:
        first.run("a")
        second.run("a")
    finally:
        unsubscribe()
    assert stores == [("a", first.store.url), ("a", second.store.url)]


# -- what a run announces ----------------------------------------------------------------------
def test_events_announce_every_stage_that_runs(pipeline, chain):
    seen = []
    unsubscribe = subscribe(lambda e: seen.append((e.kind, e.stage, e.index, e.total)))
    try:
        pipeline.run("b")
        pipeline.run("b")
        pipeline.invalidate("a")
    finally:
        unsubscribe()
    assert seen == [
        ("run_started", None, 0, 2),
        ("started", "a", 1, 2), ("finished", "a", 1, 2),
        ("started", "b", 2, 2), ("finished", "b", 2, 2),
        ("run_finished", None, 2, 2),
        ("run_started", None, 0, 0),
        ("skipped", "a", 0, 0), ("skipped", "b", 0, 0),
        ("run_finished", None, 0, 0),
        ("invalidated", "a", 0, 0),
    ]


def test_a_stage_exception_carries_a_nothing_stored_note_and_a_failed_event(pipeline):
    @stage(outputs="v")
    def bad():
        raise ValueError("x")
    seen = []
    unsubscribe = subscribe(lambda e: seen.append((e.kind, e.stage)))
    try:
        with pytest.raises(ValueError) as err:
            pipeline.run("bad")
    finally:
        unsubscribe()
    assert any("nothing was stored" in n for n in err.value.__notes__)
    assert ("failed", "bad") in seen and ("finished", "bad") not in seen


def test_a_failed_run_announces_the_failure_and_still_finishes(pipeline, heard):
    @stage(outputs="x")
    def a():
        raise ValueError("boom")

    @stage(outputs="y")
    def b(x):
        return x

    with pytest.raises(ValueError):
        pipeline.run("b")
    assert heard == [
        ("run_started", None, 0, 2),
        ("started", "a", 1, 2), ("failed", "a", 1, 2),
        ("run_finished", None, 0, 2),
    ]


def test_a_finished_stage_says_how_long_it_took_and_a_failed_one_what_went_wrong(pipeline):
    @stage(outputs="x")
    def good():
        return 1

    @stage(outputs="y")
    def bad():
        raise ValueError("boom")

    events = []
    unsubscribe = subscribe(events.append)
    try:
        pipeline.run("good")
        with pytest.raises(ValueError):
            pipeline.run("bad")
    finally:
        unsubscribe()
    (finished,) = [e for e in events if e.kind == "finished"]
    (failed,) = [e for e in events if e.kind == "failed"]
    assert finished.stage == "good" and finished.duration is not None and finished.duration >= 0
    assert failed.stage == "bad" and failed.error == "ValueError: boom"
    assert {e.store for e in events} == {pipeline.store.url}


def test_stages_run_on_an_executor_are_announced_in_order_too(store_dir, chain, heard):
    with ThreadPoolExecutor(2) as pool:
        Pipeline(store_dir, executor=pool).run("c")
    assert heard == [
        ("run_started", None, 0, 3),
        ("started", "a", 1, 3), ("finished", "a", 1, 3),
        ("started", "b", 2, 3), ("finished", "b", 2, 3),
        ("started", "c", 3, 3), ("finished", "c", 3, 3),
        ("run_finished", None, 3, 3),
    ]


# -- a listener cannot break a run -------------------------------------------------------------
def test_a_listener_that_raises_is_named_in_a_warning_and_the_run_goes_on(pipeline, chain,
                                                                          heard):
    def broken_listener(event):
        raise RuntimeError("listener bug")

    unsubscribe = subscribe(broken_listener)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = pipeline.run("b")
    finally:
        unsubscribe()
    assert result["y"] == 2 and result.executed == ["a", "b"]
    messages = [str(w.message) for w in caught]
    assert messages and all("broken_listener failed: RuntimeError('listener bug')" in m
                            for m in messages)
    assert heard[-1] == ("run_finished", None, 2, 2)  # the others heard everything


def test_a_callable_object_is_a_listener_too(pipeline, chain):
    class Counter:
        def __init__(self):
            self.count = 0

        def __call__(self, event):
            self.count += 1

    counter = Counter()
    unsubscribe = subscribe(counter)
    try:
        pipeline.run("a")
    finally:
        unsubscribe()
    assert counter.count == 4  # run_started, started, finished, run_finished


@pytest.mark.parametrize("executor", [None, "threads"])
def test_a_started_event_says_why_the_stage_runs(store_dir, chain, executor):
    """The run's own check gives the reason (no second check is needed to say it), here
    and on an executor."""
    reasons: dict = {}
    unsubscribe = subscribe(lambda e: e.kind == "started" and reasons.update({e.stage: e.reason}))
    pool = ThreadPoolExecutor(2) if executor else None
    try:
        p = Pipeline(store=str(store_dir), executor=pool)
        p.run("c")
        assert reasons == {
            "a": "no stored result",
            "b": "upstream stage 'a' is missing: no stored result",
            "c": "upstream stage 'a' is missing: no stored result (via 'b')"}
        reasons.clear()
        p.run("a", force=True)
        assert reasons == {"a": "forced"}
        reasons.clear()
        p.run("c", force=True)
        assert reasons == {"c": "forced"}
    finally:
        unsubscribe()
        if pool is not None:
            pool.shutdown()
