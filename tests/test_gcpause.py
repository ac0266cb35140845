"""The cyclic garbage collector is paused while a large check builds its objects (issue 13),
and always left as it was found."""
from __future__ import annotations

import gc
import threading

import pytest

from pipelite import Pipeline, Registry, stage
from pipelite._freshness import LARGE
from pipelite._gcpause import collector_paused


def chain(registry: Registry, n: int) -> None:
    def link_0():
        return {"a_0": 0}

    stage(registry=registry)(link_0)
    for i in range(1, n):
        fn = eval(f"lambda a_{i - 1}: {{'a_{i}': a_{i - 1}}}")  # noqa: S307 - test stages
        fn.__name__ = fn.__qualname__ = f"link_{i}"
        stage(registry=registry, outputs=f"a_{i}")(fn)


@pytest.fixture(autouse=True)
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()


@pytest.fixture
def seen(monkeypatch) -> list[bool]:
    """Whether the collector was on, noted each time a stage is checked or its status made."""
    import pipelite._freshness as freshness

    noted: list[bool] = []
    for name in ("_defined", "status_of"):
        original = getattr(freshness, name)

        def noting(*args, _original=original, **kwargs):
            noted.append(gc.isenabled())
            return _original(*args, **kwargs)

        monkeypatch.setattr(freshness, name, noting)
    return noted


def test_a_large_status_runs_with_the_collector_paused_and_turns_it_back_on(tmp_path, seen):
    registry = Registry()
    chain(registry, LARGE)
    p = Pipeline(store=str(tmp_path / "store"), registry=registry)
    assert len(p.status()) == LARGE
    assert len(seen) == 2 * LARGE and not any(seen)
    assert gc.isenabled()


def test_a_large_plan_or_run_checks_with_the_collector_paused(tmp_path, seen):
    registry = Registry()
    chain(registry, LARGE)
    p = Pipeline(store=str(tmp_path / "store"), registry=registry)
    assert len(p.plan()) == LARGE
    assert len(seen) == LARGE and not any(seen)
    assert gc.isenabled()


def test_a_small_check_leaves_the_collector_alone(tmp_path, seen):
    registry = Registry()
    chain(registry, 2)
    Pipeline(store=str(tmp_path / "store"), registry=registry).status()
    assert seen and all(seen)


def test_a_collector_you_turned_off_stays_off(tmp_path):
    registry = Registry()
    chain(registry, LARGE)
    gc.disable()
    Pipeline(store=str(tmp_path / "store"), registry=registry).status()
    assert not gc.isenabled()


def test_pauses_that_nest_or_overlap_across_threads_end_with_the_collector_on():
    entered, release = threading.Barrier(2), threading.Event()

    def other():
        with collector_paused():
            entered.wait()
            release.wait()

    t = threading.Thread(target=other)
    with collector_paused():
        t.start()
        entered.wait()
        with collector_paused():
            assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread's pause is still on
    release.set()
    t.join()
    assert gc.isenabled()


def test_an_error_inside_a_pause_still_turns_the_collector_back_on():
    with pytest.raises(ZeroDivisionError):
        with collector_paused():
            raise ZeroDivisionError
    assert gc.isenabled()
