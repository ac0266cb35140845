"""The store's own records are input (issue 8, items 1 and 2).

Hostile paths point only at decoy files inside each test's temporary folder, outside the
store; every test asserts the decoys are untouched (content and existence).
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from pipelite import REGISTRY, Pipeline, PipeliteWarning, stage


@pytest.fixture
def decoy(tmp_path):
    """A file outside the store that nothing may read, rename or delete."""
    path = tmp_path / "decoy.npy"
    np.save(path, np.arange(3.0))
    return path


def untouched(path) -> bool:
    return path.exists() and np.array_equal(np.load(path), np.arange(3.0))


def define():
    @stage(outputs="arr")
    def make():
        return np.arange(5.0) * 10

    return make


def record_file(store_dir, name="make"):
    (path,) = [p for p in (store_dir / "records" / name).glob("*.json")
               if p.name != "FAILED.json"]
    return path


def edit_record(store_dir, change, name="make"):
    path = record_file(store_dir, name)
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec))
    return path


def refused_or_done(action) -> None:
    """Run ``action``: it may refuse (a clear PipeliteError) but may not touch outside."""
    from pipelite import UnsafeStorePathError

    try:
        action()
    except UnsafeStorePathError as exc:
        assert "symbolic link inside the store" in str(exc)


def fresh_pipeline(store_dir) -> Pipeline:
    """A new Pipeline: nothing cached in memory, as in a new kernel."""
    return Pipeline(store=str(store_dir))


# -- 1. nothing outside the store is touched ---------------------------------------------------
@pytest.mark.parametrize("hostile", ["../../decoy.npy", "ABSOLUTE"])
def test_an_output_path_leading_out_of_the_store_is_never_deleted_or_loaded(
        store_dir, decoy, hostile):
    define()
    Pipeline(store=str(store_dir)).run("make")
    target = str(decoy) if hostile == "ABSOLUTE" else hostile
    edit_record(store_dir, lambda r: r["outputs"]["arr"].update(path=target, size=1))
    p = fresh_pipeline(store_dir)
    with pytest.warns(PipeliteWarning, match="corrupt record"):
        assert p.status()[0].state in ("stale", "missing")
    result = p.run("make")
    assert list(result["arr"]) == [0, 10, 20, 30, 40] and result.executed == ["make"]
    assert untouched(decoy)


def test_a_record_naming_a_file_outside_with_its_true_hash_is_not_served(store_dir, decoy):
    from pipelite.formats import hash_file

    define()
    Pipeline(store=str(store_dir)).run("make")
    edit_record(store_dir, lambda r: r["outputs"]["arr"].update(
        path=str(decoy), size=decoy.stat().st_size, hash=hash_file(str(decoy))))
    with pytest.warns(PipeliteWarning, match="corrupt record"):
        value = fresh_pipeline(store_dir).run("make")["arr"]
    assert list(value) == [0, 10, 20, 30, 40] and untouched(decoy)


def test_a_latest_pointer_leading_out_of_the_store_is_ignored(store_dir, tmp_path, decoy):
    define()
    Pipeline(store=str(store_dir)).run("make")
    outside = tmp_path / "evil"
    outside.mkdir()
    (outside / "x.json").write_text('{"stage": "make"}')
    (store_dir / "records" / "make" / "LATEST").write_text("../../../evil/x")
    REGISTRY.clear()  # a new kernel: the stage is known from the store only
    with pytest.warns(PipeliteWarning, match="does not hold a fingerprint"):
        (s,) = fresh_pipeline(store_dir).status()
    assert s.state == "fresh" and s.outputs[0].name == "arr"  # found by listing instead
    assert (outside / "x.json").read_text() == '{"stage": "make"}' and untouched(decoy)


@pytest.mark.parametrize("where", ["records", "records/make", "objects"])
def test_a_symlinked_store_folder_is_refused_not_followed(store_dir, tmp_path, decoy, where):
    define()
    Pipeline(store=str(store_dir)).run("make")
    real = store_dir / where
    moved = tmp_path / "elsewhere"
    real.rename(moved)
    real.symlink_to(moved, target_is_directory=True)
    before = sorted(str(p.relative_to(moved)) for p in moved.rglob("*"))
    p = fresh_pipeline(store_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PipeliteWarning)
        p.status()
        refused_or_done(lambda: p.run("make"))
        refused_or_done(p.gc)
        refused_or_done(lambda: p.invalidate("make"))
    after = sorted(str(q.relative_to(moved)) for q in moved.rglob("*"))
    assert before == after and untouched(decoy)  # nothing read, moved or deleted there


def test_a_symlinked_object_file_is_not_followed_and_its_target_is_kept(store_dir, decoy):
    define()
    Pipeline(store=str(store_dir)).run("make")
    (obj,) = (store_dir / "objects").rglob("*.npy")
    obj.unlink()
    obj.symlink_to(decoy)
    value = fresh_pipeline(store_dir).run("make")["arr"]
    assert list(value) == [0, 10, 20, 30, 40] and untouched(decoy)


def test_gc_deletes_no_file_a_symlink_in_objects_points_to(store_dir, decoy):
    define()
    p = Pipeline(store=str(store_dir))
    p.run("make")
    link = store_dir / "objects" / "ab" / ("ab" + "0" * 30 + ".npy")
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(decoy)
    (store_dir / "objects" / "not-ours").symlink_to(decoy.parent, target_is_directory=True)
    p.gc()
    assert untouched(decoy)
    assert not link.exists()  # the link itself is garbage: removed, its target kept


def test_a_damaged_object_is_moved_to_quarantine_not_deleted(store_dir):
    define()
    Pipeline(store=str(store_dir)).run("make")
    (obj,) = (store_dir / "objects").rglob("*.npy")
    obj.write_bytes(obj.read_bytes()[:-8] + b"\x00" * 8)  # same size, other bytes
    with pytest.warns(PipeliteWarning, match="quarantine"):
        assert list(fresh_pipeline(store_dir).run("make")["arr"]) == [0, 10, 20, 30, 40]
    (kept,) = (store_dir / "quarantine").iterdir()
    assert kept.name.startswith(obj.name) and kept.stat().st_size == obj.stat().st_size


# -- 2. no bad record is fatal ------------------------------------------------------------------
BAD_RECORDS = {
    "a list": lambda r: [],
    "an empty object": lambda r: {},
    "outputs is a number": lambda r: {**r, "outputs": 5},
    "size as text": lambda r: {**r, "outputs": {"arr": {**r["outputs"]["arr"], "size": "80"}}},
    "an empty output entry": lambda r: {**r, "outputs": {"arr": {}}},
    "a start time that is not one": lambda r: {**r, "started": "yesterday"},
    "parts as a list": lambda r: {**r, "parts": []},
    "a flipped byte in the format": lambda r: {**r, "outputs": {"arr": {
        **r["outputs"]["arr"], "format": "npz"}}},
    "observed files as text": lambda r: {**r, "observed": {"files": "data.csv"}},
    "another stage's record": lambda r: {**r, "stage": "other"},
}


@pytest.mark.parametrize("change", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_malformed_record_is_reported_once_ignored_and_recomputed(store_dir, change):
    define()
    Pipeline(store=str(store_dir)).run("make")
    path = record_file(store_dir)
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    p = fresh_pipeline(store_dir)
    with pytest.warns(PipeliteWarning, match="corrupt record") as seen:
        assert p.status()[0].state in ("stale", "missing")
        p.status()
        p.explain("make")
    assert len([w for w in seen if "corrupt record" in str(w.message)]) == 1
    assert str(path) in str(seen[0].message)
    result = p.run("make")
    assert list(result["arr"]) == [0, 10, 20, 30, 40] and result.executed == ["make"]
    assert p.status()[0].state == "fresh"


def test_deeply_nested_json_in_a_record_is_reported_not_a_recursion_error(store_dir):
    define()
    Pipeline(store=str(store_dir)).run("make")
    record_file(store_dir).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.warns(PipeliteWarning, match="not JSON"):
        assert fresh_pipeline(store_dir).status()[0].state in ("stale", "missing")


def test_a_failed_json_holding_a_list_is_ignored(store_dir):
    define()
    p = Pipeline(store=str(store_dir))
    p.run("make")
    (store_dir / "records" / "make" / "FAILED.json").write_text("[]")
    with pytest.warns(PipeliteWarning, match="FAILED.json"):
        assert fresh_pipeline(store_dir).status()[0].state == "fresh"


def test_two_swapped_outputs_are_caught(store_dir):
    @stage(outputs=["a", "b"])
    def pair():
        return {"a": np.zeros(3), "b": np.ones(3)}

    Pipeline(store=str(store_dir)).run("pair")

    def swap(r):
        r["outputs"]["a"], r["outputs"]["b"] = r["outputs"]["b"], r["outputs"]["a"]

    edit_record(store_dir, swap, "pair")
    p = fresh_pipeline(store_dir)
    with pytest.warns(PipeliteWarning, match="does not match its name"):
        assert p.status()[0].state in ("stale", "missing")
    assert list(p.run("pair")["a"]) == [0, 0, 0]


def test_a_remote_stores_local_cache_is_in_your_cache_folder_not_the_shared_temp_dir(
        tmp_path, monkeypatch):
    import tempfile
    import uuid

    from pipelite import Store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    store = Store(f"memory://trust-{uuid.uuid4().hex}")
    (cache,) = store.local_dirs()
    assert cache.startswith(str(tmp_path / "cache-home"))
    assert not cache.startswith(tempfile.gettempdir() + os.sep + "pipelite-cache")
    assert oct((tmp_path / "cache-home" / "pipelite").stat().st_mode & 0o777) == oct(0o700)


def test_storing_the_same_content_again_replaces_a_damaged_copy_of_it(store_dir):
    define()
    p = Pipeline(store=str(store_dir))
    p.run("make")
    (obj,) = (store_dir / "objects").rglob("*.npy")
    obj.write_bytes(obj.read_bytes()[:-8] + b"\x00" * 8)  # same size, other bytes
    from pipelite.formats import hash_file

    info = p.store.save_value(np.arange(5.0) * 10)  # the same content stored again
    assert info.path == str(obj.relative_to(store_dir))
    assert hash_file(str(obj)) == info.hash  # the damaged copy was replaced, not kept


def test_a_write_whose_folder_was_moved_away_midway_writes_again(store_dir, monkeypatch):
    import shutil

    from pipelite._fs import LocalFS

    fs = LocalFS(str(store_dir))
    real_replace, calls = os.replace, []

    def replace_after_the_folder_moved(src, dst):
        if not calls:  # another process's invalidate renames the folder right now
            calls.append(1)
            shutil.move(os.path.dirname(src), str(store_dir / "trash-elsewhere"))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_the_folder_moved)
    fs.write_atomic("records/s/" + "0" * 32 + ".json", b"{}")
    assert (store_dir / "records" / "s" / ("0" * 32 + ".json")).read_bytes() == b"{}"


def test_an_artifact_named_with_non_ascii_letters_is_stored_and_read_back(store_dir):
    @stage(outputs="données")
    def f():
        return 1

    Pipeline(store=str(store_dir)).run("f")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PipeliteWarning)  # not "corrupt record"
        assert fresh_pipeline(store_dir).status()[0].state == "fresh"
        assert fresh_pipeline(store_dir).load("données") == 1
