"""Dependencies observed while a stage runs: files it reads, modules it imports late,
directories it lists. Each test changes one thing on disk and checks the stage's state and
the exact reason (see pipelite/_observe.py)."""
from __future__ import annotations

import glob
import importlib
import os
import sys
import sysconfig
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipelite import REGISTRY, CellStage, Pipeline, PipeliteError, _observe, stage
from tests.helpers import notebook


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder as the cwd, with data/raw.csv in it."""
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "raw.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(root)
    monkeypatch.delenv(_observe.ENV, raising=False)
    return root


@pytest.fixture
def pipe(project):
    return Pipeline(store=str(project / ".pipelite"))


def state(pipeline: Pipeline, name: str):
    (s,) = [s for s in pipeline.status() if s.name == name]
    return s


def observed(pipeline: Pipeline, name: str) -> dict:
    return pipeline.record(name).observed or {}


def observed_paths(pipeline: Pipeline, name: str) -> list[str]:
    return [f["path"] for f in observed(pipeline, name).get("files", [])]


def define_reader():
    @stage(outputs="text")
    def reader():
        with open("data/raw.csv") as f:
            return f.read()

    return reader


# -- files read -------------------------------------------------------------------------------
def test_a_stage_reading_a_file_is_stale_with_the_reason_when_its_content_changes(pipe, project):
    define_reader()
    pipe.run("reader")
    assert state(pipe, "reader").state == "fresh"
    (project / "data" / "raw.csv").write_text("a,b\n1,3\n")  # same size, new content
    s = state(pipe, "reader")
    assert s.state == "stale"
    assert s.reasons == ("file 'data/raw.csv' changed",)
    assert "file 'data/raw.csv' changed" in pipe.explain("reader")
    assert [p.name for p in pipe.plan("reader")] == ["reader"]


def test_touching_a_file_with_identical_content_keeps_the_stage_fresh(pipe, project):
    define_reader()
    pipe.run("reader")
    raw = project / "data" / "raw.csv"
    raw.write_text(raw.read_text())
    st = os.stat(raw)
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert state(pipe, "reader").state == "fresh"
    assert pipe.run("reader").executed == []


def test_removing_a_file_the_stage_read_makes_it_stale_with_was_removed(pipe, project):
    define_reader()
    pipe.run("reader")
    os.remove(project / "data" / "raw.csv")
    s = state(pipe, "reader")
    assert (s.state, s.reasons) == ("stale", ("file 'data/raw.csv' was removed",))


def test_a_file_opened_r_plus_is_a_dependency(pipe, project):
    @stage(outputs="text")
    def rplus():
        with open("data/raw.csv", "r+") as f:
            return f.read()

    pipe.run("rplus")
    (project / "data" / "raw.csv").write_text("changed\n")
    assert state(pipe, "rplus").reasons == ("file 'data/raw.csv' changed",)


def test_files_the_stage_writes_are_not_dependencies(pipe, project):
    @stage(outputs="n")
    def writer():
        with open("out.txt", "w") as f:
            f.write("x")
        with open("log.txt", "a") as f:
            f.write("y")
        fd = os.open("raw.bin", os.O_WRONLY | os.O_CREAT)
        os.close(fd)
        return 1

    pipe.run("writer")
    assert observed_paths(pipe, "writer") == []
    (project / "out.txt").write_text("something else")
    assert state(pipe, "writer").state == "fresh"


def test_files_in_the_store_are_not_recorded(pipe, project):
    @stage(outputs="n")
    def peek_store():
        for root, _dirs, files in os.walk(".pipelite"):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    f.read()
        return 1

    pipe.run("peek_store")  # the first run finds an empty store: run it once more
    pipe.run("peek_store", force=True)
    assert observed(pipe, "peek_store") == {}


def test_files_in_the_temp_dir_are_not_recorded(pipe, project):
    scratch = tempfile.mkdtemp()  # outside the project folder (the cwd)
    path = os.path.join(scratch, "scratch.txt")
    with open(path, "w") as f:
        f.write("temp")

    @stage(outputs="n")
    def temp_reader():
        with open(path) as f:
            return len(f.read())

    pipe.run("temp_reader")
    assert observed_paths(pipe, "temp_reader") == []


def test_files_in_site_packages_and_the_stdlib_are_not_recorded(pipe, project):
    lib_file = os.path.join(os.path.dirname(pytest.__file__), "__init__.py")
    std_file = os.path.join(sysconfig.get_paths()["stdlib"], "os.py")

    @stage(outputs="n")
    def lib_reader():
        with open(lib_file) as f, open(std_file) as g:
            return len(f.read()) + len(g.read())

    pipe.run("lib_reader")
    assert observed(pipe, "lib_reader") == {}


def test_a_file_read_from_a_worker_thread_the_stage_starts_is_tracked(pipe, project):
    @stage(outputs="text")
    def threaded():
        def work():
            with open("data/raw.csv") as f:
                return f.read()

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(work).result()

    pipe.run("threaded")
    assert observed_paths(pipe, "threaded") == [str(project / "data" / "raw.csv")]
    (project / "data" / "raw.csv").write_text("new\n")
    assert state(pipe, "threaded").reasons == ("file 'data/raw.csv' changed",)


def test_rerunning_after_a_change_makes_the_stage_fresh_again_with_the_new_content(pipe, project):
    reader = define_reader()
    pipe.run("reader")
    first_fp = pipe.record("reader").fingerprint
    (project / "data" / "raw.csv").write_text("new content\n")
    result = pipe.run("reader")
    assert result.executed == ["reader"]
    assert result["text"] == "new content\n"
    assert state(pipe, "reader").state == "fresh"
    assert pipe.load("text") == "new content\n"
    # the new record replaced the old one for the same fingerprint
    assert pipe.record("reader").fingerprint == first_fp
    assert len(pipe.store.records_of("reader")) == 1
    assert reader is not None


def test_load_refuses_an_artifact_whose_stage_read_a_changed_file(pipe, project):
    from pipelite import StaleArtifactError

    define_reader()
    pipe.run("reader")
    (project / "data" / "raw.csv").write_text("new\n")
    with pytest.raises(StaleArtifactError, match="file 'data/raw.csv' changed"):
        pipe.load("text")


def test_a_downstream_stage_of_a_stage_whose_file_changed_is_stale(pipe, project):
    define_reader()

    @stage(outputs="length")
    def measure(text):
        return len(text)

    pipe.run("measure")
    (project / "data" / "raw.csv").write_text("new\n")
    (reason,) = state(pipe, "measure").reasons
    assert reason.startswith("upstream stage 'reader' is stale: file ") and "changed" in reason


def test_a_new_pipeline_in_another_process_sees_the_change(pipe, project):
    define_reader()
    pipe.run("reader")
    (project / "data" / "raw.csv").write_text("new!\n")
    other = Pipeline(store=str(project / ".pipelite"))  # records read from disk, no caches
    _observe._HASHES.clear()
    assert state(other, "reader").reasons == ("file 'data/raw.csv' changed",)


def test_a_stage_known_only_from_the_store_is_stale_when_a_file_it_read_changed(pipe,
                                                                                project):
    from pipelite import REGISTRY

    define_reader()
    pipe.run("reader")
    REGISTRY.clear()  # a restarted kernel, before the stage's cell ran again
    assert state(pipe, "reader").state == "fresh"
    (project / "data" / "raw.csv").write_text("new!\n")
    s = state(pipe, "reader")
    assert s.state == "stale" and "file 'data/raw.csv' changed" in s.reasons
    with pytest.raises(PipeliteError, match="not up to date"):
        pipe.load("text")


# -- modules imported -------------------------------------------------------------------------
def test_a_module_imported_inside_the_stage_is_tracked_and_its_edit_makes_it_stale(
        pipe, project, monkeypatch):
    (project / "helper2.py").write_text("FACTOR = 2\n")
    monkeypatch.syspath_prepend(str(project))
    importlib.invalidate_caches()
    monkeypatch.delitem(sys.modules, "helper2", raising=False)
    assert "helper2" not in sys.modules

    @stage(outputs="y")
    def uses_helper():
        mod = importlib.import_module("helper2")  # invisible to static analysis
        return mod.FACTOR

    try:
        pipe.run("uses_helper")
        mods = observed(pipe, "uses_helper")["modules"]
        assert [(m["name"], m["file"]) for m in mods] == [("helper2",
                                                           str(project / "helper2.py"))]
        assert state(pipe, "uses_helper").state == "fresh"
        (project / "helper2.py").write_text("FACTOR = 3\n")
        s = state(pipe, "uses_helper")
        assert (s.state, s.reasons) == ("stale", ("module 'helper2' changed",))
    finally:
        sys.modules.pop("helper2", None)


def test_a_forced_rerun_keeps_tracking_a_module_the_first_run_imported(
        pipe, project, monkeypatch):
    (project / "helper3.py").write_text("FACTOR = 2\n")
    monkeypatch.syspath_prepend(str(project))
    importlib.invalidate_caches()

    @stage(outputs="y")
    def uses_helper3():
        return importlib.import_module("helper3").FACTOR

    try:
        pipe.run("uses_helper3")
        pipe.run("uses_helper3", force=True)  # helper3 is loaded now: no import event
        assert [m["name"] for m in observed(pipe, "uses_helper3")["modules"]] == ["helper3"]
    finally:
        sys.modules.pop("helper3", None)


# -- directories listed -----------------------------------------------------------------------
def test_listing_a_directory_with_listdir_then_adding_a_file_makes_the_stage_stale(
        pipe, project):
    @stage(outputs="names")
    def lister():
        return sorted(os.listdir("data"))

    pipe.run("lister")
    assert state(pipe, "lister").state == "fresh"
    (project / "data" / "new.csv").write_text("x")
    s = state(pipe, "lister")
    assert (s.state, s.reasons) == ("stale", ("directory 'data' listing changed",))


def test_globbing_a_directory_then_adding_a_file_makes_the_stage_stale(pipe, project):
    @stage(outputs="names")
    def globber():
        return sorted(glob.glob("data/*.csv"))

    pipe.run("globber")
    assert state(pipe, "globber").state == "fresh"
    (project / "data" / "more.csv").write_text("x")
    assert state(pipe, "globber").reasons == ("directory 'data' listing changed",)


def test_rewriting_a_file_in_a_listed_directory_keeps_the_listing_unchanged(pipe, project):
    @stage(outputs="names")
    def lister2():
        return sorted(os.listdir("data"))

    pipe.run("lister2")
    (project / "data" / "raw.csv").write_text("other content\n")  # names unchanged
    assert state(pipe, "lister2").state == "fresh"


# -- cells, threads, switches -----------------------------------------------------------------
def test_a_cell_stage_reading_a_file_is_tracked(pipe, project):
    ns = notebook()
    REGISTRY.add(CellStage("cell_reader", "with open('data/raw.csv') as f:\n"
                                          "    text = f.read()\n", ns))
    pipe.run("cell_reader")
    assert observed_paths(pipe, "cell_reader") == [str(project / "data" / "raw.csv")]
    (project / "data" / "raw.csv").write_text("cell!\n")
    s = state(pipe, "cell_reader")
    assert (s.state, s.reasons) == ("stale", ("file 'data/raw.csv' changed",))


@pytest.mark.filterwarnings("ignore:closure 'barrier'")
def test_concurrent_stages_on_a_thread_pool_each_record_their_own_file(project):
    (project / "data" / "left.txt").write_text("L")
    (project / "data" / "right.txt").write_text("R")
    barrier = threading.Barrier(2, timeout=20)

    @stage(outputs="left")
    def left():
        barrier.wait()  # both stages are running now
        with open("data/left.txt") as f:
            text = f.read()
        barrier.wait()
        return text

    @stage(outputs="right")
    def right():
        barrier.wait()
        with open("data/right.txt") as f:
            text = f.read()
        barrier.wait()
        return text

    with ThreadPoolExecutor(2) as pool:
        pipe = Pipeline(str(project / ".pipelite"), executor=pool)
        pipe.run(["left", "right"])
    assert observed_paths(pipe, "left") == [str(project / "data" / "left.txt")]
    assert observed_paths(pipe, "right") == [str(project / "data" / "right.txt")]
    (project / "data" / "left.txt").write_text("changed")
    assert state(pipe, "left").state == "stale"
    assert state(pipe, "right").state == "fresh"


def test_the_hook_records_nothing_when_no_stage_runs(pipe, project):
    define_reader()
    pipe.run("reader")  # installs the hook
    assert _observe.hook_installed()
    probe = _observe.Recorder(())  # a recorder that is not started receives nothing
    assert _observe._all == () and _observe._by_thread == {}
    with open("data/raw.csv") as f:
        f.read()
    os.listdir("data")
    assert (probe.opens, probe.modules, probe.listings) == ([], [], [])
    assert _observe._all == ()


def test_PIPELITE_OBSERVE_0_turns_observation_off(pipe, project, monkeypatch):
    monkeypatch.setenv(_observe.ENV, "0")
    define_reader()
    pipe.run("reader")
    assert pipe.record("reader").observed is None
    (project / "data" / "raw.csv").write_text("new\n")
    assert state(pipe, "reader").state == "fresh"


def test_with_observation_off_a_record_that_has_observations_is_still_checked(pipe, project,
                                                                            monkeypatch):
    define_reader()
    pipe.run("reader")  # observed
    monkeypatch.setenv(_observe.ENV, "0")
    (project / "data" / "raw.csv").write_text("new!\n")
    assert state(pipe, "reader").reasons == ("file 'data/raw.csv' changed",)


def test_a_module_imported_with_an_import_statement_inside_the_stage_is_tracked(
        pipe, project, monkeypatch):
    (project / "helper4.py").write_text("FACTOR = 4\n")
    monkeypatch.syspath_prepend(str(project))
    importlib.invalidate_caches()

    @stage(outputs="y")
    def imports_helper4():
        import helper4
        return helper4.FACTOR

    try:
        pipe.run("imports_helper4")
        (project / "helper4.py").write_text("FACTOR = 5\n")
        assert state(pipe, "imports_helper4").reasons == ("module 'helper4' changed",)
    finally:
        sys.modules.pop("helper4", None)


def test_a_file_read_after_the_stage_changes_directory_is_recorded_by_its_real_path(
        pipe, project):
    @stage(outputs="text")
    def moves():
        old = os.getcwd()
        os.chdir("data")
        try:
            with open("raw.csv") as f:
                return f.read()
        finally:
            os.chdir(old)

    pipe.run("moves")
    assert observed_paths(pipe, "moves") == [str(project / "data" / "raw.csv")]


def test_a_small_file_is_hashed_whole_even_if_it_grew_since_its_stat(tmp_path):
    from pipelite.formats import hash_file

    path = tmp_path / "grown.txt"
    path.write_bytes(b"0123456789" * 1000)
    assert _observe._hash_small(str(path), 10_000) == hash_file(str(path))
    assert _observe._hash_small(str(path), 3) == hash_file(str(path))  # stat taken earlier
