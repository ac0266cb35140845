"""The store (pipelite/store.py): values, records, the latest result, the stages it knows,
invalidate and gc, each on both kinds of filesystem a store lives on: a local directory and an
fsspec URL (``memory://``, standing in for S3 and the like). Reading a store location
(pipelite/_location.py) and the filesystems' interface (pipelite/_fs.py) are here too.

The themed files beside this one go deeper on the local store: test_store_integrity (verify
levels), test_store_limits (full and read-only disks), test_store_races (processes racing gc),
test_store_signing and test_store_trust (what a store's content may and may not make PipeLite
do), test_store_verify (remote objects' local copies).
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import xxhash

from pipelite import REGISTRY, Pipeline, PipeliteError, PipeliteWarning, Store, stage


@pytest.fixture(params=["local", "memory"])
def location(request, tmp_path, monkeypatch):
    """Where a fresh store lives: a local directory, or a ``memory://`` URL of this test's own
    (its download cache in this test's folder), emptied afterwards."""
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url = f"memory://pipelite-test-{uuid.uuid4().hex}"
    yield url
    _remove_everything_at(url)


def _remove_everything_at(url: str) -> None:
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def files(location: str):
    """The store's filesystem seen from outside PipeLite (fsspec's), and its root there."""
    return fsspec.core.url_to_fs(location)


def define():
    @stage(outputs="arr")
    def make(*, n=1):
        return np.arange(5.0) * n

    return make


class Decoy:
    """A file outside the store, on the store's own filesystem, that nothing may read, rename
    or delete."""

    DATA = b"not the store's to touch"

    def __init__(self, url: str):
        self.url = url
        self.fs, self.path = fsspec.core.url_to_fs(url)
        self.fs.pipe_file(self.path, self.DATA)

    def untouched(self) -> bool:
        return self.fs.exists(self.path) and self.fs.cat_file(self.path) == self.DATA


@pytest.fixture
def decoy(location, tmp_path):
    if location.startswith("memory://"):
        folder = f"memory://decoy-{uuid.uuid4().hex}"
        yield Decoy(f"{folder}/decoy.npy")
        _remove_everything_at(folder)
    else:
        yield Decoy(str(tmp_path / "decoy.npy"))


# -- values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.arange(6.0).reshape(2, 3), {"a": 1, "b": [1, 2]}],
                         ids=["array", "json"])
def test_a_saved_value_loads_back_equal(location, value):
    store = Store(location)
    info = store.save_value(value)
    again = Store(location).load_value(info)  # a new Store: nothing cached in memory
    if isinstance(value, np.ndarray):
        assert np.array_equal(again, value) and again.dtype == value.dtype
    else:
        assert again == value


def test_the_same_content_saved_twice_is_stored_once(location):
    store = Store(location)
    first = store.save_value(np.arange(3.0))
    second = store.save_value(np.arange(3.0))
    assert first.path == second.path and first.hash == second.hash
    fs, root = files(location)
    folder = posixpath.dirname(f"{root}/{first.path}")
    assert len(fs.ls(folder, detail=False)) == 1


# -- records -----------------------------------------------------------------------------------
def test_a_result_is_read_back_as_it_was_written(location):
    define()
    pipeline = Pipeline(location)
    pipeline.run()
    written = pipeline.record("make")
    store = Store(location)  # a new Store: read from the files, nothing cached
    read = store.record("make", written.fingerprint)
    assert read == written
    assert np.array_equal(store.load_value(read.outputs["arr"], record=read),
                          np.arange(5.0))


def test_records_are_human_readable_json_with_everything_the_contract_lists(location):
    @stage(outputs="w")
    def train(data_in=None, *, epochs=3):
        return np.ones(4) * epochs

    @stage(outputs="data_in")
    def gen():
        return [1, 2]

    pipeline = Pipeline(location)
    pipeline.run("train")
    fs, root = files(location)
    text = fs.cat_file(f"{root}/records/train/{pipeline.record('train').fingerprint}.json")
    rec = json.loads(text)
    assert rec["stage"] == "train" and rec["params"] == {"epochs": "3"}
    assert rec["inputs"]["data_in"]["stage"] == "gen"
    out = rec["outputs"]["w"]
    assert {"hash", "size", "format", "path"} <= set(out) and out["format"] == "npy"
    assert rec["started"] and rec["duration"] >= 0
    assert set(rec["versions"]) >= {"python", "numpy", "pipelite"}
    assert set(rec["parts"]) >= {"code", "helpers", "globals", "params", "inputs"}


def test_results_survive_a_new_pipeline_on_the_same_store(location):
    define()
    assert list(Pipeline(location).run()["arr"]) == [0, 1, 2, 3, 4]
    again = Pipeline(location).run()
    assert again.executed == [] and list(again["arr"]) == [0, 1, 2, 3, 4]


def test_latest_is_the_newest_result_of_a_stage_and_records_of_lists_all_newest_first(
        location):
    define()
    pipeline = Pipeline(location)
    for n in (1, 2):
        pipeline.run(params={"make": {"n": n}})
    store = Store(location)
    assert store.latest("make").params == {"n": "2"}
    assert [r.params for r in store.records_of("make")] == [{"n": "2"}, {"n": "1"}]


def test_a_result_whose_latest_pointer_was_never_written_is_still_found(location):
    define()
    Pipeline(location).run("make")
    fs, root = files(location)
    fs.rm_file(f"{root}/records/make/LATEST")
    REGISTRY.clear()
    (s,) = Pipeline(location).status()
    assert s.state == "fresh" and s.outputs[0].name == "arr"


def test_a_failed_run_is_kept_until_the_next_success(location):
    @stage(outputs="v")
    def flaky(*, fail=True):
        if fail:
            raise ValueError("not today")
        return 1

    pipeline = Pipeline(location)
    with pytest.raises(ValueError):
        pipeline.run(params={"flaky": {"fail": True}})
    failure = Store(location).failure("flaky")
    assert failure is not None and "not today" in failure.error
    pipeline.run(params={"flaky": {"fail": False}})
    assert Store(location).failure("flaky") is None


@pytest.mark.parametrize("hostile", ["relative", "absolute"])
def test_a_record_naming_a_path_outside_the_store_is_refused(location, decoy, hostile):
    define()
    Pipeline(location).run("make")
    fs, root = files(location)
    (rel,) = [p for p in fs.ls(f"{root}/records/make", detail=False) if p.endswith(".json")]
    rec = json.loads(fs.cat_file(rel))
    target = posixpath.relpath(decoy.path, root) if hostile == "relative" else decoy.path
    rec["outputs"]["arr"].update(  # the decoy's true size and hash: only its path is wrong
        path=target, size=len(Decoy.DATA), hash=xxhash.xxh3_128_hexdigest(Decoy.DATA))
    fs.pipe_file(rel, json.dumps(rec).encode())
    with pytest.warns(PipeliteWarning, match="corrupt record"):
        assert Store(location).record("make", rec["fingerprint"]) is None
    with pytest.warns(PipeliteWarning, match="corrupt record"):
        result = Pipeline(location).run("make")  # recomputed, from nothing the record named
    assert result.executed == ["make"] and list(result["arr"]) == [0, 1, 2, 3, 4]
    assert decoy.untouched()


# -- the stages a store knows ------------------------------------------------------------------
def test_stages_lists_every_stage_with_a_stored_result_by_name(location):
    @stage(outputs="b_out")
    def beta():
        return 2

    @stage(outputs="a_out")
    def alpha():
        return 1

    Pipeline(location).run()
    assert Store(location).stages() == ["alpha", "beta"]


def test_a_stage_folder_named_unlike_a_stage_is_not_listed(location):
    define()
    Pipeline(location).run("make")
    fs, root = files(location)
    fs.makedirs(f"{root}/records/..evil", exist_ok=True)
    fs.makedirs(f"{root}/records/sp ace", exist_ok=True)
    assert [s.name for s in Pipeline(location).status()] == ["make"]


# -- invalidate --------------------------------------------------------------------------------
def test_invalidate_forgets_every_result_of_a_stage_and_nothing_else(location):
    define()

    @stage(outputs="other")
    def keep():
        return 0

    pipeline = Pipeline(location)
    for n in (1, 2):
        pipeline.run(params={"make": {"n": n}})
    store = Store(location)
    assert store.invalidate("make") == 2
    assert store.records_of("make") == [] and store.latest("make") is None
    assert Store(location).latest("make") is None
    assert len(store.records_of("keep")) == 1
    assert store.invalidate("make") == 0  # nothing left to forget


# -- gc ----------------------------------------------------------------------------------------
def test_gc_keeps_the_newest_results_per_stage(location):
    @stage(outputs="v")
    def f(*, n=0):
        return np.full(10, n)

    pipeline = Pipeline(location, params={"f": {"n": 2}})  # the newest is the fresh one: gc
    for n in range(3):                                    # never removes a fresh result
        pipeline.run("f", params={"f": {"n": n}})
    assert len(pipeline.store.records_of("f")) == 3
    report = pipeline.gc(keep=1, grace=0)  # just written: collected only without the grace period
    assert report.records == 2 and report.objects == 2 and report.bytes > 0
    assert pipeline.run("f", params={"f": {"n": 2}}).executed == []
    assert pipeline.run("f", params={"f": {"n": 0}}).executed == ["f"]
    with pytest.raises(PipeliteError, match="keep must be at least 1"):
        pipeline.gc(keep=0)


def test_gc_collects_an_object_no_record_names_only_after_the_grace_period(location):
    define()
    Pipeline(location).run()
    store = Store(location)
    orphan = store.save_value(np.arange(7.0))  # as if its run died before the record
    assert store.gc().objects == 0 and store.object_exists(orphan)  # young: it may be in use
    assert store.gc(grace=0).objects == 1 and not store.object_exists(orphan)
    (rec,) = store.records_of("make")
    assert list(store.load_value(rec.outputs["arr"], record=rec)) == [0, 1, 2, 3, 4]


def test_gc_removes_leftovers_of_interrupted_writes_but_not_fresh_ones(store_dir):
    define()
    pipeline = Pipeline(store_dir)
    pipeline.run("make")
    root = pipeline.store.url
    old_tmp = os.path.join(root, "tmp", "leftover.npy")
    new_tmp = os.path.join(root, "tmp", "in-progress.npy")
    for path in (old_tmp, new_tmp):
        with open(path, "wb") as f:
            f.write(b"x" * 100)
    os.utime(old_tmp, (0, 0))  # written long ago by a process that died
    pipeline.gc()
    assert not os.path.exists(old_tmp) and os.path.exists(new_tmp)
    assert pipeline.run("make").executed == []


def test_scrub_finds_an_intact_store_intact(location):
    define()
    Pipeline(location).run()
    report = Store(location).scrub()
    assert report.ok and report.records == 1 and report.objects == 1


# -- durability --------------------------------------------------------------------------------
def test_frame_objects_are_fsynced_before_rename(pipeline, monkeypatch):
    pd = pytest.importorskip("pandas")
    synced, real = [], os.fsync
    monkeypatch.setattr(os, "fsync",
                        lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))

    @stage(outputs="df")
    def mk():
        return pd.DataFrame({"a": [1, 2]})

    pipeline.run()
    assert any(p.endswith(".arrow") for p in synced), synced


# -- where a store is --------------------------------------------------------------------------
@pytest.mark.parametrize("bad, kind", [(12, "int"), (None, "NoneType"), (b"x", "bytes")])
def test_a_store_that_is_not_a_path_is_a_pipelite_error(bad, kind):
    with pytest.raises(PipeliteError, match=f"store must be a path or an fsspec URL string, "
                                            f"not {kind}"):
        Pipeline(store=bad)


@pytest.mark.parametrize("given, is_remote, path_or_url", [
    (".pipelite", False, ".pipelite"),
    ("/data/store", False, "/data/store"),
    (Path("~/store"), False, "~/store"),
    ("file:///data/store", False, "/data/store"),
    ("file://relative/store", False, "relative/store"),
    ("memory://x", True, "memory://x"),
    ("s3://bucket/prefix", True, "s3://bucket/prefix"),
    ("simplecache::s3://bucket/prefix", True, "simplecache::s3://bucket/prefix"),
    ("simplecache::file:///data/store", True, "simplecache::file:///data/store"),
])
def test_a_store_location_is_read_as_a_url_or_a_local_path(given, is_remote, path_or_url):
    from pipelite._location import parse_location

    assert parse_location(given) == (is_remote, path_or_url)


def test_a_file_url_store_is_the_local_directory_it_names(tmp_path):
    define()
    Pipeline(f"file://{tmp_path / 'store'}").run()
    assert Store(str(tmp_path / "store")).stages() == ["make"]
    assert Store(f"file://{tmp_path / 'store'}").url == str(tmp_path / "store")


def test_both_filesystems_implement_everything_the_store_asks_of_one():
    from pipelite._fs import FsspecFS, LocalFS, StoreFS

    asked = [name for name in vars(StoreFS) if not name.startswith("_")]
    assert {"write_atomic", "commit", "reuse", "stamp", "local_copy", "local_root"} <= set(asked)
    for fs in (LocalFS, FsspecFS):
        missing = [name for name in asked if getattr(fs, name) is getattr(StoreFS, name)]
        assert not missing, (fs.__name__, missing)
