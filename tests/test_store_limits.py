"""Disk full and read-only stores (issue 8, item 4), on real small file systems.

Each test mounts a 2 MiB tmpfs (root only; CI runs as root) and unmounts it afterwards. A
full disk gives ``StoreFullError`` naming the store, the stage and the bytes, and leaves
nothing partial; a read-only store still answers status() and loads fresh results, and
refuses writes with ``StoreNotWritableError``.
"""
from __future__ import annotations

import gc
import os
import pickle
import shutil
import subprocess
import warnings

import numpy as np
import pytest

import pipelite._fs as _fs
import pipelite.store as store_mod
from pipelite import (
    Pipeline,
    PipeliteError,
    PipeliteWarning,
    Store,
    StoreFullError,
    StoreNotWritableError,
    stage,
)
from pipelite.formats import Format

PAGE = 4096


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture
def disk(tmp_path):
    """A 2 MiB tmpfs: a real disk that fills up. Unmounted (lazily if a memory-mapped array
    loaded from it is still alive) when the test ends."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    if shutil.which("mount") is None:
        pytest.skip("no mount command (util-linux) on this machine")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = _run("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt))
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs in this sandbox: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        gc.collect()  # drop memory maps of loaded arrays, which keep the mount busy
        if _run("umount", str(mnt)).returncode:
            _run("umount", "-l", str(mnt))


def _remount(mnt, mode: str) -> None:
    done = _run("mount", "-o", f"remount,{mode}", str(mnt))
    assert done.returncode == 0, done.stderr


def _free(mnt) -> int:
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def _fill(mnt, leave: int = 0) -> None:
    """Take the disk's free space, leaving ``leave`` bytes (whole pages)."""
    with open(mnt / f"filler-{len(os.listdir(mnt))}", "wb") as f:
        f.write(b"\0" * max(0, _free(mnt) - leave))
    assert _free(mnt) == leave


def _leftovers(store) -> dict[str, list[str]]:
    """Everything a failed write could leave: objects, records (not FAILED.json), temp files."""
    found: dict[str, list[str]] = {"objects": [], "records": [], "tmp": []}
    for root, _dirs, files in os.walk(store):
        rel = os.path.relpath(root, store)
        for name in files:
            if name.startswith(".tmp-") or rel.startswith("tmp"):
                found["tmp"].append(f"{rel}/{name}")
            elif rel.startswith("objects"):
                found["objects"].append(f"{rel}/{name}")
            elif rel.startswith("records") and name != "FAILED.json":
                found["records"].append(f"{rel}/{name}")
    return found


NOTHING = {"objects": [], "records": [], "tmp": []}
BIG = 3 << 17  # float64 items: 3 MiB, more than the whole disk


# -- a full disk ------------------------------------------------------------------------------
def test_a_full_disk_while_writing_an_object_raises_store_full_error_naming_store_stage_and_bytes(
        disk):
    @stage(outputs="arr")
    def big():
        return np.ones(BIG)

    pipe = Pipeline(store=str(disk / "store"))
    with pytest.raises(StoreFullError) as info:
        pipe.run("big")
    err = info.value
    assert isinstance(err, PipeliteError)
    assert (err.store, err.stage, err.needed) == (str(disk / "store"), "big", BIG * 8)
    text = str(err)
    assert str(disk / "store") in text and "stage 'big'" in text
    assert "3.0 MiB (3,145,728 bytes)" in text and "no space left on device" in text
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == 28


def test_a_full_disk_leaves_no_record_no_object_and_no_temp_file(disk):
    @stage
    def two():
        return {"fits": np.ones(1 << 17), "too_big": np.ones(BIG)}  # 1 MiB, then 3 MiB

    store = disk / "store"
    before = _free(disk)
    with pytest.raises(StoreFullError):
        Pipeline(store=str(store)).run("two")
    assert _leftovers(store) == NOTHING  # the 1 MiB object that fitted was taken back
    assert before - _free(disk) <= 4 * PAGE  # FAILED.json, nothing more


def test_the_store_is_usable_after_a_full_disk(disk):
    @stage(outputs="arr")
    def big():
        return np.ones(BIG)

    @stage(outputs="small")
    def small():
        return np.arange(1000)

    pipe = Pipeline(store=str(disk / "store"))
    with pytest.raises(StoreFullError):
        pipe.run("big")
    assert int(pipe.run("small")["small"].sum()) == 499500
    states = {s.name: s.state for s in pipe.status()}
    assert states == {"big": "failed", "small": "fresh"}


def test_a_full_disk_while_writing_the_record_raises_store_full_error_and_takes_back_its_object(
        disk):
    @stage(outputs="arr")
    def mid():
        return np.ones(1024)  # 8 KiB + the .npy header: 3 pages

    store = disk / "store"
    Store.check_writable(str(store))  # the new store's folder and its .gitignore, no more
    _fill(disk, leave=3 * PAGE)  # room for the object, none for the record
    with pytest.raises(StoreFullError) as info:
        Pipeline(store=str(store)).run("mid")
    assert "writing the record of stage 'mid' needs" in str(info.value)
    assert info.value.needed > 0 and str(store) in str(info.value)
    assert _leftovers(store) == NOTHING


def test_a_native_format_failing_on_io_is_not_retried_as_pickle(disk, monkeypatch):
    tried = []
    spy = Format("pickle", ".pkl", lambda v: True,
                 lambda v, p: tried.append(p) or store_mod.PICKLE.save(v, p),
                 store_mod.PICKLE.load)
    monkeypatch.setattr(store_mod, "PICKLE", spy)

    @stage(outputs="numbers")
    def numbers():
        return list(range(600_000))  # JSON-exact, about 4 MB of JSON

    with pytest.raises(StoreFullError) as info:
        Pipeline(store=str(disk / "store")).run("numbers")
    assert tried == []  # one write, as JSON; no second try as pickle
    assert "an output (list) of stage 'numbers'" in str(info.value)
    assert _leftovers(disk / "store") == NOTHING


def test_the_users_exception_survives_when_failed_json_cannot_be_written(disk):
    @stage(outputs="x")
    def broken():
        raise ValueError("the user's own error")

    store = disk / "store"
    _fill(disk)
    with pytest.warns(PipeliteWarning, match=r"failure could not be recorded.*is full"):
        with pytest.raises(ValueError, match="the user's own error"):
            Pipeline(store=str(store)).run("broken")
    assert not (store / "records" / "broken" / "FAILED.json").exists()


def test_a_result_whose_latest_pointer_could_not_be_written_is_still_found(disk, monkeypatch):
    @stage(outputs="y")
    def made(*, n: int = 1):
        return np.full(10, n)

    store = disk / "store"
    Pipeline(store=str(store)).run("made")  # LATEST names this first result
    write_atomic = _fs.LocalFS.write_atomic

    def full_before_latest(self, rel, data):
        if rel.endswith("/LATEST"):
            _fill(disk)  # the disk fills between the record and its pointer
        return write_atomic(self, rel, data)

    monkeypatch.setattr(_fs.LocalFS, "write_atomic", full_before_latest)
    with pytest.warns(PipeliteWarning, match="LATEST pointer could not be written"):
        result = Pipeline(store=str(store), params={"made": {"n": 2}}).run("made")
    assert list(result["y"]) == [2] * 10  # reported as stored, not as a failure
    new = result.records["made"].fingerprint
    assert Store(str(store)).latest("made").fingerprint == new  # not the older result
    statuses = Pipeline(store=str(store), params={"made": {"n": 2}}).status()
    assert [s.state for s in statuses] == ["fresh"]


def test_store_errors_survive_pickling_from_worker_processes():
    for err in (StoreFullError("/s", "big", 10, "the record", 28),
                StoreNotWritableError("/s", "/s/locks", "run stage 'x'", 30)):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert vars(back) == vars(err)


# -- a read-only store ------------------------------------------------------------------------
@pytest.fixture
def read_only(disk):
    """A store with fresh results of 'made' (two records: n=1, then n=2), then remounted
    read-only. Returns (store path, the mount)."""
    store = disk / "store"

    @stage(outputs="y")
    def made(*, n: int = 1):
        return np.full(10, n)

    Pipeline(store=str(store)).run("made")
    Pipeline(store=str(store), params={"made": {"n": 2}}).run("made")
    return store, disk


def test_status_and_loads_of_fresh_results_work_in_a_read_only_store(read_only):
    store, disk = read_only
    _remount(disk, "ro")
    pipe = Pipeline(store=str(store), params={"made": {"n": 2}})
    assert [(s.name, s.state) for s in pipe.status()] == [("made", "fresh")]
    assert list(pipe.load("y")) == [2] * 10
    result = pipe.run("made")  # fresh: loads, takes no lock, writes nothing
    assert result.executed == [] and list(result["y"]) == [2] * 10


@pytest.mark.parametrize("locks", ["with its locks folder", "without a locks folder"])
def test_running_a_stale_stage_in_a_read_only_store_raises_store_not_writable_error(
        read_only, locks):
    store, disk = read_only
    if locks.startswith("without"):
        shutil.rmtree(store / "locks")
    _remount(disk, "ro")
    ran = []

    @stage(outputs="y")
    def made(*, n: int = 1):
        ran.append(n)
        return np.full(10, n)

    with pytest.raises(StoreNotWritableError) as info:
        Pipeline(store=str(store), params={"made": {"n": 3}}).run("made")
    assert ran == []  # refused before the stage's code ran, not after an hour of compute
    text = str(info.value)
    assert f"cannot run stage 'made': the store {store} is not writable" in text
    assert "read-only file system" in text and str(store / "locks") in text


def test_invalidate_in_a_read_only_store_raises_store_not_writable_error(read_only):
    store, disk = read_only
    _remount(disk, "ro")
    with pytest.raises(StoreNotWritableError, match=f"cannot invalidate stage 'made': the "
                                                    f"store {store} is not writable"):
        Pipeline(store=str(store)).invalidate("made")


def test_gc_in_a_read_only_store_raises_store_not_writable_error(read_only):
    store, disk = read_only  # two records: gc(keep=1) has one to delete (n=1: n=2 is fresh)
    _remount(disk, "ro")
    with pytest.raises(StoreNotWritableError, match=f"cannot collect garbage \\(gc\\): the "
                                                    f"store {store} is not writable"):
        Pipeline(store=str(store), params={"made": {"n": 2}}).gc(keep=1)


def test_a_stale_stage_on_an_executor_in_a_read_only_store_raises_store_not_writable_error(
        read_only):
    from concurrent.futures import ThreadPoolExecutor

    store, disk = read_only
    _remount(disk, "ro")
    with ThreadPoolExecutor(1) as pool:
        pipe = Pipeline(store=str(store), params={"made": {"n": 3}}, executor=pool)
        with pytest.raises(StoreNotWritableError, match="cannot run stage 'made'"):
            pipe.run("made")


def test_a_committed_result_keeps_its_objects_when_its_latest_warning_is_an_error(
        disk, monkeypatch):
    @stage(outputs="y")
    def made():
        return np.full(10, 7)

    store = disk / "store"
    write_atomic = _fs.LocalFS.write_atomic

    def full_before_latest(self, rel, data):
        if rel.endswith("/LATEST"):
            _fill(disk)
        return write_atomic(self, rel, data)

    monkeypatch.setattr(_fs.LocalFS, "write_atomic", full_before_latest)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PipeliteWarning)  # as under python -W error
        with pytest.raises(PipeliteWarning, match="LATEST pointer could not be written"):
            Pipeline(store=str(store)).run("made")
    assert list(Pipeline(store=str(store)).load("y")) == [7] * 10  # record and object kept
