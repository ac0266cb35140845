"""Files and folders as artifacts: ``File`` inputs tracked by content (stat first, hashes
remembered across processes), file outputs stored and put back in place on a hit."""
from __future__ import annotations

import json
import os
import warnings

import pytest

from pipelite import (
    File,
    Pipeline,
    PipeliteError,
    StageOutputError,
    UnsafeRestoreError,
    _hashcache,
    _observe,
    stage,
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "img").mkdir(parents=True)
    (tmp_path / "data" / "raw.csv").write_text("a,b\n1,2\n")
    for i in range(3):
        (tmp_path / "data" / "img" / f"{i}.png").write_text(f"image {i}")
    return tmp_path


def _calls(path="calls.log"):
    return open(path).read() if os.path.exists(path) else ""


def _log(tag):
    with open("calls.log", "a") as f:
        f.write(tag)


def _define_reader():
    @stage(outputs="n")
    def read(*, raw=File("data/raw.csv"), images=File("data/img")):
        _log("r")
        return len(raw.read_text()) + len(os.listdir(images))


def _age(path, seconds=10):
    """Make a file look written ``seconds`` ago (older than the racy window)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


# -- inputs -------------------------------------------------------------------------------
def test_a_changed_input_file_is_named_and_its_old_content_is_still_a_hit(project):
    _define_reader()
    p = Pipeline()
    p.run("read")
    (project / "data" / "raw.csv").write_text("a,b\n1,3\n")
    s = p.status()[0]
    assert s.state == "stale" and s.reasons == ("file 'data/raw.csv' changed",)
    p.run("read")
    assert _calls() == "rr"
    (project / "data" / "raw.csv").write_text("a,b\n1,2\n")  # back as it was: keyed by content
    assert p.status()[0].state == "fresh"
    p.run("read")
    assert _calls() == "rr"


def test_touching_an_input_file_without_changing_it_reruns_nothing(project):
    _define_reader()
    p = Pipeline()
    p.run("read")
    os.utime(project / "data" / "raw.csv")
    os.utime(project / "data" / "img" / "1.png")
    assert p.status()[0].state == "fresh"


def test_a_folder_names_the_file_added_removed_or_changed(project):
    _define_reader()
    p = Pipeline()
    p.run("read")
    img = project / "data" / "img"
    (img / "1.png").write_text("edited")
    (img / "0.png").unlink()
    (img / "sub").mkdir()
    (img / "sub" / "9.png").write_text("new")
    assert set(p.status()[0].reasons) == {"file 'data/img/1.png' changed",
                                          "file 'data/img/0.png' was removed",
                                          "file 'data/img/sub/9.png' was added"}
    (img / "sub" / "9.png").unlink()
    (img / "empty").mkdir()  # an empty folder holds no content
    (img / "0.png").write_text("image 0")
    (img / "1.png").write_text("image 1")
    assert p.status()[0].state == "fresh"


def test_an_unchanged_folder_in_a_new_process_is_checked_by_stat_alone(project, monkeypatch):
    _define_reader()
    for f in (project / "data").rglob("*"):
        if f.is_file():
            _age(f)
    p = Pipeline()
    p.run("read")
    _hashcache.flush()
    _observe._HASHES.clear()  # as a new kernel: only the machine's hash cache remains

    def no_reading(*args):
        raise AssertionError("an unchanged file was read again")

    monkeypatch.setattr(_observe, "_hash_small", no_reading)
    monkeypatch.setattr(_observe, "hash_file", no_reading)
    assert Pipeline().status()[0].state == "fresh"


def test_a_recently_written_file_is_never_remembered(project):
    path = str(project / "data" / "raw.csv")  # written just now: within the racy window
    st = os.stat(path)
    _observe._hash(path, st)
    _hashcache.flush()
    assert _hashcache.lookup(path, _observe._key(st)) is None
    _age(path)
    st = os.stat(path)
    digest = _observe._hash(path, st)
    _hashcache.flush()
    assert _hashcache.lookup(path, _observe._key(st)) == digest


def test_a_damaged_hash_cache_only_means_hashing_again(project, monkeypatch, tmp_path):
    bad = tmp_path / "cache.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv(_hashcache.ENV, str(bad))
    _observe._HASHES.clear()
    _define_reader()
    p = Pipeline()
    assert p.run("read")["n"] == len("a,b\n1,2\n") + 3
    (project / "data" / "raw.csv").write_text("x")
    assert p.status()[0].reasons == ("file 'data/raw.csv' changed",)


def test_a_hash_cache_entry_that_is_not_a_hash_is_ignored(project, monkeypatch, tmp_path):
    monkeypatch.setenv(_hashcache.ENV, str(tmp_path / "c.sqlite3"))
    path = str(project / "data" / "raw.csv")
    _age(path)
    st = os.stat(path)
    _hashcache.remember(path, _observe._key(st), "../../etc/passwd")
    _hashcache.flush()
    assert _hashcache.lookup(path, _observe._key(st)) is None


def test_a_global_file_and_a_list_of_files_count_by_content(project):
    RAW = File("data/raw.csv")

    @stage(outputs="g")
    def uses_global():
        return RAW.read_text()

    @stage(outputs="lst")
    def uses_list(*, paths=(File("data/img/0.png"), File("data/img/1.png"))):
        return [p.read_text() for p in paths]

    p = Pipeline()
    p.run()
    (project / "data" / "raw.csv").write_text("changed")
    (project / "data" / "img" / "1.png").write_text("changed")
    status = {s.name: s for s in p.status()}
    (why,) = status["uses_global"].reasons  # a closure here; a global in a notebook
    assert "'RAW'" in why and why.endswith("changed")
    assert status["uses_list"].reasons == ("file 'data/img/1.png' changed",)


def test_a_declared_file_is_not_also_an_observed_one(project):
    _define_reader()
    p = Pipeline()
    p.run("read")
    rec = p.store.latest("read")
    observed = json.dumps(rec.observed or {})
    assert "raw.csv" not in observed and "img" not in observed
    (project / "data" / "raw.csv").write_text("changed")
    assert p.status()[0].reasons == ("file 'data/raw.csv' changed",)  # said once


def test_a_missing_input_file_is_a_reason_then_a_hit_once_back(project):
    _define_reader()
    p = Pipeline()
    p.run("read")
    os.rename("data/raw.csv", "raw.bak")
    assert p.status()[0].reasons == ("file 'data/raw.csv' was removed",)
    os.rename("raw.bak", "data/raw.csv")
    assert p.status()[0].state == "fresh"


def test_file_needs_a_path():
    with pytest.raises(PipeliteError, match="give the path of a file or folder"):
        File(3)
    with pytest.raises(PipeliteError, match="give the path"):
        File("")


# -- outputs ------------------------------------------------------------------------------
def _define_report(body="<h1>report</h1>"):
    @stage
    def report(*, title="t"):
        _log("w")
        os.makedirs("out", exist_ok=True)
        with open("out/report.html", "w") as f:
            f.write(body)
        return {"report": File("out/report.html")}

    @stage(outputs="size")
    def size(report):
        _log("s")
        return len(report.read_text())


def test_a_deleted_file_output_is_restored_by_a_hit_without_running(project):
    _define_report()
    p = Pipeline()
    assert p.run("size")["size"] == len("<h1>report</h1>")
    os.remove("out/report.html")
    assert p.status()[0].state == "fresh"
    with pytest.warns(Warning, match="restored out/report.html from the store"):
        p.run("size")
    assert _calls() == "ws"
    assert open("out/report.html").read() == "<h1>report</h1>"
    os.remove("out/report.html")
    with pytest.warns(Warning, match="restored"):
        loaded = p.load("report")
    assert isinstance(loaded, File) and open(loaded).read() == "<h1>report</h1>"


def test_an_edited_file_output_is_restored_and_the_edit_kept_beside_it(project):
    _define_report()
    p = Pipeline()
    p.run("report")
    with open("out/report.html", "w") as f:
        f.write("my edits")
    with pytest.warns(Warning, match="kept as out/report.html.~pipelite~"):
        p.run("report")
    assert open("out/report.html").read() == "<h1>report</h1>"
    assert open("out/report.html.~pipelite~").read() == "my edits"
    assert _calls() == "w"


def test_the_stored_copy_is_not_linked_to_the_file_in_place(project):
    _define_report()
    p = Pipeline()
    p.run("report")
    os.remove("out/report.html")
    with pytest.warns(Warning):
        p.run("report")
    with open("out/report.html", "a") as f:  # an edit in place must not reach the store
        f.write("!")
    info = p.store.latest("report").outputs["report"]
    p.store.verify(info)  # the stored object still has its hash


def test_a_rerun_writing_the_same_file_leaves_downstream_fresh(project):
    _define_report()
    p = Pipeline()
    p.run("size")
    p.run("size", force=True)
    p.run("report", force=True)
    p.run("size")
    assert _calls() == "wssw"  # size forced once; the identical file is an early cut-off
    _define_report(body="<h1>new</h1>")
    p.run("size")
    assert _calls().endswith("ws")


def test_a_file_output_must_be_a_file_under_the_current_folder(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "x.txt"
    outside.write_text("x")

    @stage
    def far():
        return {"out": File(str(outside))}

    @stage
    def folder():
        return {"out2": File("data/img")}

    p = Pipeline()
    with pytest.raises(StageOutputError, match="outside the current folder"):
        p.run("far")
    with pytest.raises(StageOutputError, match="is a folder"):
        p.run("folder")


@pytest.mark.parametrize("hostile", ["../decoy.txt", "/abs/decoy.txt", "a/../../decoy.txt",
                                     ".pipelite/objects/x", "link/decoy.txt"])
def test_a_record_naming_a_hostile_place_restores_nothing(project, hostile):
    _define_report()
    p = Pipeline()
    p.run("report")
    decoy = project.parent / "decoy.txt"
    decoy.write_text("decoy")
    (project / "elsewhere").mkdir()
    os.symlink(project / "elsewhere", project / "link")
    rec_path = next((project / ".pipelite" / "records" / "report").glob("*.json"))
    data = json.loads(rec_path.read_text())
    data["outputs"]["report"]["file"] = hostile
    rec_path.write_text(json.dumps(data))
    os.remove("out/report.html")
    p = Pipeline()
    with pytest.raises(UnsafeRestoreError):
        p.load("report")
    assert decoy.read_text() == "decoy"
    assert not (project / "elsewhere" / "decoy.txt").exists()
    assert not os.path.exists("out/report.html")


def test_a_file_output_from_an_unsigned_record_is_not_written(project, monkeypatch):
    _define_report()
    p = Pipeline()
    p.run("report")
    rec_path = next((project / ".pipelite" / "records" / "report").glob("*.json"))
    data = json.loads(rec_path.read_text())
    data.pop("signature")
    rec_path.write_text(json.dumps(data))
    os.remove("out/report.html")
    with pytest.raises(PipeliteError, match="not signed with your key"):
        Pipeline().load("report")
    assert not os.path.exists("out/report.html")


def test_file_outputs_in_place_are_not_rewritten(project):
    _define_report()
    p = Pipeline()
    p.run("report")
    before = os.stat("out/report.html").st_ino
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "restored" warning
        p.run("report")
        p.load("report")
    assert os.stat("out/report.html").st_ino == before


def test_a_subclass_of_file_counts_by_content_too(project, monkeypatch):
    monkeypatch.setenv("PIPELITE_OBSERVE", "0")  # the fingerprint alone must see it

    class DataFile(File):
        __slots__ = ()

    RAW = DataFile("data/raw.csv")

    @stage(outputs="sub")
    def uses_subclass(*, path=RAW):
        return path.read_text()

    @stage(outputs="glob")
    def reads_it():
        return RAW.read_text()

    p = Pipeline()
    p.run()
    (project / "data" / "raw.csv").write_text("changed")
    assert all(s.state == "stale" for s in p.status())


def test_explain_says_when_a_file_output_is_not_in_place(project):
    _define_report()
    p = Pipeline()
    p.run("report")
    assert "note:" not in p.explain("report")
    with open("out/report.html", "w") as f:
        f.write("edited")
    assert "file output out/report.html was changed" in p.explain("report")
    os.remove("out/report.html")
    text = p.explain("report")
    assert text.startswith("stage 'report' is fresh")
    assert "file output out/report.html was deleted: the next run or load puts it back" in text


def test_the_log_names_a_changed_input_file(project):
    from pipelite.present import changed_parts

    _define_reader()
    p = Pipeline()
    p.run("read")
    (project / "data" / "img" / "2.png").write_text("new")
    p.run("read")
    newer, older = p.store.records_of("read")[:2]
    assert changed_parts(older.parts, newer.parts) == ["file 'data/img'"]


def test_a_folder_s_remembered_hashes_come_in_one_query_and_only_its_own(project):
    (project / "data" / "img2").mkdir()
    (project / "data" / "img2" / "x.png").write_text("sibling")
    paths = [p for p in (project / "data").rglob("*.png")]
    keys = {}
    for p in paths:
        _age(p)
        st = os.stat(p)
        keys[str(p)] = _observe._key(st)
        _hashcache.remember(str(p), keys[str(p)], f"{len(keys):032x}")
    _hashcache.flush()
    found = _hashcache.under(str(project / "data" / "img"))
    assert set(found) == {keys[str(p)] for p in paths if p.parent.name == "img"}


def test_an_input_file_changed_while_the_stage_ran_stores_nothing(project):
    """Which content the stage read cannot be known: no result may be served for either."""
    @stage(outputs="first")
    def appends(*, log=File("data/raw.csv")):
        before = log.read_text()
        with open(log, "a") as f:
            f.write("more\n")
        return before

    p = Pipeline()
    with pytest.warns(Warning, match="file 'data/raw.csv' changed while it ran: .* not stored"):
        assert p.run("appends")["first"] == "a,b\n1,2\n"
    assert not (project / ".pipelite" / "records" / "appends").exists()
    assert p.status()[0].state == "missing"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_does_not_inherit_a_held_hash_cache_lock(project):
    """A process pool forks while another thread may hold the cache's lock: the child must
    not wait for a lock nobody in it will release."""
    import multiprocessing

    _hashcache.flush()
    with _hashcache._lock:  # held by this thread at the fork
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=_hashcache.flush)
        child.start()
        child.join(20)
    if child.is_alive():  # stuck on the lock: stop it (by its PID), then fail
        child.kill()
        child.join()
    assert child.exitcode == 0


def test_a_second_edit_of_an_output_does_not_overwrite_the_first_backup(project):
    _define_report()
    p = Pipeline()
    p.run("report")
    for edit in ("edit 1", "edit 2"):
        with open("out/report.html", "w") as f:
            f.write(edit)
        with pytest.warns(Warning, match="kept as out/report.html.~pipelite"):
            p.run("report")
    assert open("out/report.html.~pipelite~").read() == "edit 1"
    assert open("out/report.html.~pipelite-2~").read() == "edit 2"


def test_a_file_output_inside_the_store_is_refused_before_anything_is_stored(project):
    @stage
    def into_store():
        os.makedirs(".pipelite", exist_ok=True)
        with open(".pipelite/evil.txt", "w") as f:
            f.write("e")
        return {"evil": File(".pipelite/evil.txt")}

    p = Pipeline()
    with pytest.raises(StageOutputError, match="cannot be a file output: .*inside the store"):
        p.run("into_store")
    assert p.status()[0].state == "failed"


def test_reasons_are_said_against_the_result_last_found_fresh(project):
    """a=1 (run), a=2 (run), a=1 (fresh again: the older result), then b changes: only b is
    named, not a (which differs only from the newest result)."""
    (project / "a.txt").write_text("1")
    (project / "b.txt").write_text("1")

    @stage(outputs="v")
    def pair(*, a=File("a.txt"), b=File("b.txt")):
        return a.read_text() + b.read_text()

    p = Pipeline()
    p.run()
    (project / "a.txt").write_text("2")
    p.run()
    (project / "a.txt").write_text("1")
    assert p.status()[0].state == "fresh"
    (project / "b.txt").write_text("2")
    assert p.status()[0].reasons == ("file 'b.txt' changed",)


def test_the_hash_cache_can_be_moved_or_turned_off(project, monkeypatch, tmp_path):
    monkeypatch.delenv(_hashcache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _hashcache.location() == str(tmp_path / "xdg" / "pipelite" / "file-hashes.sqlite3")
    monkeypatch.setenv(_hashcache.ENV, "off")
    assert _hashcache.location() is None
    path = str(project / "data" / "raw.csv")
    _age(path)
    key = _observe._key(os.stat(path))
    _hashcache.remember(path, key, "0" * 32)
    _hashcache.flush()
    assert _hashcache.lookup(path, key) is None


def test_a_big_folder_is_named_whole_and_linked_folders_are_not_followed(project, monkeypatch):
    import pipelite.fingerprint

    monkeypatch.setattr(pipelite.fingerprint, "LISTED_FILES", 2)  # 3 files: too many to list
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "big.bin").write_text("not part of the folder")
    os.symlink(elsewhere, project / "data" / "img" / "linked")
    _define_reader()
    p = Pipeline()
    p.run("read")
    (elsewhere / "big.bin").write_text("changed: still not part of it")
    assert p.status()[0].state == "fresh"
    (project / "data" / "img" / "1.png").write_text("edited")
    assert p.status()[0].reasons == ("folder 'data/img/' changed",)
