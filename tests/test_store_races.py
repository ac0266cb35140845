"""gc and invalidate never race a writer or a reader: real processes, real files.

Processes are started with multiprocessing's 'spawn' context and sequenced with events and
queues (never a bare sleep); every wait has a deadline.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipelite import ArtifactRemovedError, Pipeline, PipeliteWarning, Store, stage

CTX = multiprocessing.get_context("spawn")
DEADLINE = 120  # seconds for any one wait on another process
ROUNDS = int(os.environ.get("PIPELITE_RACE_ROUNDS", "30"))
OLD = time.time() - 3 * 3600  # an mtime well past gc's default grace period (1 h)


# -- stages, the same in every process --------------------------------------------------------
def numbers(*, n: int = 0):
    return np.arange(2000, dtype=np.int64) + n


def total(numbers):
    return int(numbers.sum())


def register() -> None:
    stage(outputs="numbers")(numbers)
    stage(outputs="total")(total)


def expected_total(n: int) -> int:
    return int((np.arange(2000, dtype=np.int64) + n).sum())


# -- children ---------------------------------------------------------------------------------
def _writer(store: str, rounds: int, started, out) -> None:
    """Run numbers -> total for ``rounds`` new parameters; report every failure or warning."""
    register()
    pipe = Pipeline(store)
    problems: list[str] = []
    started.set()
    for n in range(rounds):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                got = pipe.run("total", params={"numbers": {"n": n}})["total"]
                if got != expected_total(n):
                    problems.append(f"round {n}: total {got}, expected {expected_total(n)}")
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                problems.append(f"round {n}: {type(exc).__name__}: {exc}")
        problems += [f"round {n}: warning: {w.message}" for w in caught
                     if issubclass(w.category, PipeliteWarning)]
    out.put(problems)


def _blocked_record_writer(store: str, n: int, ready, go, out) -> None:
    """Run ``numbers`` but stop inside write_atomic, with the record's .tmp-* file written and
    not yet renamed into place, until ``go``."""
    register()
    real_fsync = os.fsync

    def fsync(fd):
        where = os.readlink(f"/proc/self/fd/{fd}")
        if "/records/" in where and os.path.basename(where).startswith(".tmp-") \
                and not ready.is_set():
            out.put(where)
            ready.set()
            if not go.wait(DEADLINE):
                raise TimeoutError("never told to go on")
        real_fsync(fd)

    os.fsync = fsync
    try:
        value = Pipeline(store).run("numbers", params={"numbers": {"n": n}})["numbers"]
        out.put(("ok", int(value[0])))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def _lock_holder(store: str, fingerprint: str, held, release, out) -> None:
    lock = Store(store).lock("numbers", fingerprint)
    with lock:
        out.put(lock.lock_file)
        held.set()
        release.wait(DEADLINE)


def _helper(store: str, commands, replies) -> None:
    """Another process acting on the store on command: ("gc", keep, grace) or ("remove", rel)."""
    st = Store(store)
    while True:
        command = commands.get(timeout=DEADLINE)
        if command[0] == "stop":
            return
        if command[0] == "gc":
            replies.put(str(st.gc(keep=command[1], grace=command[2])))
        elif command[0] == "remove":
            os.remove(os.path.join(store, command[1]))
            replies.put("removed")


def _join(proc) -> None:
    proc.join(DEADLINE)
    if proc.is_alive():
        proc.kill()
        pytest.fail("a child process did not finish in time")
    assert proc.exitcode == 0


@pytest.fixture(autouse=True)
def plain_main(monkeypatch):
    """'spawn' reads ``__main__``; IPython tests in this session may leave one without a
    ``__spec__``: the children need no main module at all."""
    import types

    main = types.ModuleType("__main__")
    main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", main)


@pytest.fixture
def store(store_dir):
    register()
    return str(store_dir)


# -- 1. a writer committing in a loop while gc runs over and over --------------------------
def test_gc_in_a_loop_never_breaks_a_writer_committing_results(store):
    started, out = CTX.Event(), CTX.Queue()
    writer = CTX.Process(target=_writer, args=(store, ROUNDS, started, out))
    writer.start()
    assert started.wait(DEADLINE)
    st = Store(store)
    gcs, deadline = 0, time.monotonic() + DEADLINE
    while writer.is_alive() and time.monotonic() < deadline:
        st.gc(keep=10_000)  # keep every record: every committed result must stay loadable
        gcs += 1
    problems = out.get(timeout=DEADLINE)
    _join(writer)
    assert gcs > 0 and problems == []
    loaded = 0
    for name in ("numbers", "total"):
        recs = st.records_of(name)
        assert len(recs) == ROUNDS
        for rec in recs:
            for info in rec.outputs.values():
                st.load_value(info, verify=True)
                loaded += 1
    assert loaded == 2 * ROUNDS


# -- 2. gc between an object's commit and its record's commit -----------------------------
def test_an_object_without_a_record_yet_survives_gc_within_the_grace_period(store):
    st = Store(store)
    info = st.save_value(np.arange(50))  # what a writer does before it commits the record
    path = Path(st.object_path(info))
    assert st.gc().objects == 0 and path.exists()
    os.utime(path, (OLD, OLD))
    assert st.gc(grace=4 * 3600).objects == 0 and path.exists()
    report = st.gc(grace=0)
    assert report.objects == 1 and report.bytes == info.size and not path.exists()


def test_an_object_named_by_a_record_is_never_collected_however_old(store):
    pipe = Pipeline(store)
    pipe.run("total")
    for path in Path(store, "objects").rglob("*.*"):
        os.utime(path, (OLD, OLD))
    assert pipe.gc(grace=0).objects == 0
    assert pipe.run("total").executed == [] and pipe.load("total") == expected_total(0)


def test_old_leftovers_of_interrupted_writes_are_collected_and_young_ones_kept(store):
    Pipeline(store).run("numbers")
    records = Path(store, "records", "numbers")
    old_tmp, young_tmp = records / (".tmp-" + "a" * 32), records / (".tmp-" + "b" * 32)
    stray = Path(store, "tmp", "leftover.npy")
    for path in (old_tmp, young_tmp, stray):
        path.write_bytes(b"x" * 10)
    os.utime(old_tmp, (OLD, OLD))
    Store(store).gc()
    assert not old_tmp.exists() and young_tmp.exists() and stray.exists()
    Store(store).gc(grace=0)
    assert not young_tmp.exists() and not stray.exists()
    assert Pipeline(store).run("numbers").executed == []


# -- 3. invalidate while another process writes a record ---------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the file via /proc")
def test_invalidate_keeps_another_process_in_flight_record_and_raises_nothing(store):
    pipe = Pipeline(store)
    pipe.run("numbers", params={"numbers": {"n": 1}})
    ready, go, out = CTX.Event(), CTX.Event(), CTX.Queue()
    child = CTX.Process(target=_blocked_record_writer, args=(store, 2, ready, go, out))
    child.start()
    try:
        assert ready.wait(DEADLINE), "the child never reached its record write"
        tmp = out.get(timeout=DEADLINE)
        assert os.path.dirname(tmp) == os.path.join(store, "records", "numbers")
        assert pipe.invalidate("numbers") == 1  # the committed record only
        assert os.path.exists(tmp)  # the in-flight write is where its writer will rename it
        assert not any(Path(store, "trash").iterdir())  # the trash was emptied
    finally:
        go.set()
    result = out.get(timeout=DEADLINE)
    _join(child)
    assert result == ("ok", 2)  # its commit went through, into a fresh folder
    assert Store(store).records_of("numbers")[0].params == {"n": "2"}
    assert pipe.run("numbers", params={"numbers": {"n": 2}}).executed == []
    assert pipe.run("numbers", params={"numbers": {"n": 1}}).executed == ["numbers"]


# -- 4. a held lock -----------------------------------------------------------------------
def test_gc_never_removes_a_lock_another_process_holds_even_an_old_one(store):
    held, release, out = CTX.Event(), CTX.Event(), CTX.Queue()
    child = CTX.Process(target=_lock_holder, args=(store, "f" * 32, held, release, out))
    child.start()
    try:
        assert held.wait(DEADLINE)
        path = out.get(timeout=DEADLINE)
        os.utime(path, (OLD, OLD))
        Store(store).gc(grace=0)
        assert os.path.exists(path)
        import filelock

        with pytest.raises(filelock.Timeout):  # still the lock the child holds
            Store(store).lock("numbers", "f" * 32).acquire(blocking=False)
    finally:
        release.set()
    _join(child)
    os.utime(path, (OLD, OLD))
    young = Store(store).lock("numbers", "e" * 32)
    with young:
        pass
    Store(store).gc()
    assert not os.path.exists(path) and os.path.exists(young.lock_file)


# -- 5. an object deleted by another process under a reader -------------------------------
@pytest.fixture
def helper(store):
    commands, replies = CTX.Queue(), CTX.Queue()
    proc = CTX.Process(target=_helper, args=(store, commands, replies))
    proc.start()

    def ask(*command):
        commands.put(command)
        return replies.get(timeout=DEADLINE)

    yield ask
    commands.put(("stop",))
    _join(proc)


def _between_record_and_load(monkeypatch, action):
    """Run ``action`` (in another process) when Store.load_value is first called: after the
    record was read, before the file is opened. Returns the list of load_value calls."""
    calls = []
    real = Store.load_value

    def load_value(self, info, verify=False, record=None):
        calls.append(info.hash)
        if len(calls) == 1:
            action()
        return real(self, info, verify, record=record)

    monkeypatch.setattr(Store, "load_value", load_value)
    return calls


def _texts(caught):
    return [str(w.message) for w in caught if issubclass(w.category, PipeliteWarning)]


def test_an_object_collected_under_a_reader_is_read_again_once_not_quarantined(
        store, helper, monkeypatch):
    pipe = Pipeline(store)
    pipe.run("numbers", params={"numbers": {"n": 1}})
    pipe.run("numbers", params={"numbers": {"n": 2}})  # now the newest
    calls = _between_record_and_load(monkeypatch, lambda: helper("gc", 1, 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pipe.run("numbers", params={"numbers": {"n": 1}})  # its record: collected
    assert result.executed == ["numbers"] and result["numbers"][0] == 1
    texts = _texts(caught)
    assert len(texts) == 1 and "removed by another process" in texts[0]
    assert "reading stage 'numbers' again" in texts[0] and "corrupt" not in texts[0]
    assert len(calls) == 2  # the load, then the load after the recompute
    assert not Path(store, "quarantine").exists()


def test_an_object_gone_while_its_record_stays_is_recomputed_not_quarantined(
        store, helper, monkeypatch):
    pipe = Pipeline(store)
    pipe.run("numbers")
    rel = pipe.record("numbers").outputs["numbers"].path
    calls = _between_record_and_load(monkeypatch, lambda: helper("remove", rel))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pipe.run("numbers")
    assert result.executed == ["numbers"] and result["numbers"][0] == 0
    texts = _texts(caught)
    assert len(texts) == 2 and all("removed by another process" in t for t in texts)
    assert "reading stage 'numbers' again" in texts[0] and "recomputing" in texts[1]
    assert not any("corrupt" in t for t in texts)
    assert len(calls) == 3  # the load, the one retry, the load after the recompute
    assert not Path(store, "quarantine").exists()


def test_load_reports_a_file_removed_under_it_and_reads_its_record_again_once(
        store, helper, monkeypatch):
    pipe = Pipeline(store)
    pipe.run("numbers", params={"numbers": {"n": 1}})
    pipe.run("numbers", params={"numbers": {"n": 2}})
    reader = Pipeline(store, params={"numbers": {"n": 1}})
    calls = _between_record_and_load(monkeypatch, lambda: helper("gc", 1, 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Exception, match="not up to date") as err:  # its record is gone
            reader.load("numbers")
    assert not isinstance(err.value, ArtifactRemovedError) and len(calls) == 1
    (text,) = _texts(caught)
    assert "removed by another process" in text
    # the record stays but the file is gone: reported as removed (a CorruptArtifactError
    # subclass), never called corrupt, never quarantined
    pipe.run("numbers", params={"numbers": {"n": 1}})
    rel = reader.record("numbers").outputs["numbers"].path
    helper("remove", rel)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with pytest.raises(ArtifactRemovedError, match="removed by another process") as err:
            reader.load("numbers")
    assert "corrupt" not in str(err.value)
    assert not Path(store, "quarantine").exists()
    assert reader.run("numbers").executed == ["numbers"]
