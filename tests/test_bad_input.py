"""Issue 8, item 7: every mistake a user can make is a clear error (a ``PipeliteError`` whose
one-line message says what went wrong and how to fix it, or a ``UsageError`` from a magic):
never a raw TypeError/KeyError/AttributeError from PipeLite's internals, and never silent."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import pipelite
import pipelite_ipy
from pipelite import (
    Artifact,
    FormatError,
    FormatLoadError,
    FormatSaveError,
    InvalidArgumentError,
    InvalidNameError,
    ParameterError,
    Pipeline,
    StageDefinitionError,
    StageOutputError,
    StoreLocationError,
    register_format,
    stage,
)
from pipelite import formats as _formats
from pipelite_ipy.cell import CellSyntaxError


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


@pytest.fixture
def user_formats():
    """register_format is process-wide: each test leaves the user formats as it found them."""
    saved = list(_formats._USER)
    yield
    _formats._USER[:] = saved


@pytest.fixture
def one_stage():
    @stage(outputs="x")
    def s(*, k=1):
        return k

    return s


# -- params ---------------------------------------------------------------------------------
def test_params_that_are_not_a_mapping_are_refused_with_the_fix(store_dir):
    with pytest.raises(ParameterError, match=r"must map stage names to their parameters, "
                                             r"e\.g\. params=\{'train_model': \{'epochs': 5\}\}; "
                                             r"got list"):
        Pipeline(store=str(store_dir), params=[("s", {"k": 1})])


def test_params_that_are_not_a_mapping_per_stage_are_refused_with_the_fix(store_dir, one_stage):
    with pytest.raises(ParameterError, match=r"the parameters of stage 's' must be a mapping "
                                             r".*params=\{'s': \{'epochs': 5\}\}; got int 5"):
        Pipeline(store=str(store_dir), params={"s": 5})


def test_params_keyed_by_a_stage_object_say_to_use_its_name(store_dir, one_stage):
    with pytest.raises(ParameterError, match=r"keys are stage names .*use its name, 's'"):
        Pipeline(store=str(store_dir), params={one_stage: {"k": 2}})


def test_params_with_a_non_string_parameter_name_are_refused(store_dir, one_stage):
    with pytest.raises(ParameterError, match=r"parameter names of stage 's' are strings"):
        Pipeline(store=str(store_dir), params={"s": {1: 2}})


def test_run_params_per_stage_that_are_not_a_mapping_are_refused(pipeline, one_stage):
    with pytest.raises(ParameterError, match=r"run\(params=\.\.\.\): the parameters of stage "
                                             r"'s' must be a mapping"):
        pipeline.run(params={"s": 5})


def test_run_params_that_are_not_a_mapping_are_refused(pipeline, one_stage):
    with pytest.raises(ParameterError, match=r"run\(params=\.\.\.\) must map stage names"):
        pipeline.run(params=5)


def test_status_params_that_are_not_a_mapping_are_refused(pipeline, one_stage):
    with pytest.raises(ParameterError, match=r"status\(params=\.\.\.\) must map stage names"):
        pipeline.status(params=5)


def test_plan_params_per_stage_that_are_not_a_mapping_are_refused(pipeline, one_stage):
    with pytest.raises(ParameterError, match=r"plan\(params=\.\.\.\): the parameters of stage"):
        pipeline.plan(params={"s": 5})


def test_run_force_that_is_not_a_bool_is_refused_not_taken_as_true(pipeline, one_stage):
    with pytest.raises(InvalidArgumentError, match=r"run\(force='no'\): force must be True or "
                                                   r"False"):
        pipeline.run("s", force="no")


def test_plan_force_that_is_not_a_bool_is_refused(pipeline, one_stage):
    with pytest.raises(InvalidArgumentError, match=r"force must be True or False"):
        pipeline.plan("s", force=1)


# -- gc -------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", ["1", 1.5, None, True])
def test_gc_keep_that_is_not_a_whole_number_is_refused(pipeline, keep):
    with pytest.raises(InvalidArgumentError, match=r"keep must be a whole number of results "
                                                   r"to keep per stage, 1 or more"):
        pipeline.gc(keep=keep)


def test_gc_keep_below_one_is_refused_pointing_at_invalidate(pipeline):
    with pytest.raises(InvalidArgumentError, match=r"keep must be at least 1 \(use "
                                                   r"invalidate\(name\)"):
        pipeline.gc(keep=0)


# -- the store ------------------------------------------------------------------------------
def test_a_store_that_is_a_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    with pytest.raises(StoreLocationError, match=rf"store {path} is not a directory"):
        Pipeline(store=str(path))


def test_a_store_under_dev_null_is_refused_naming_it():
    with pytest.raises(StoreLocationError, match=r"store /dev/null is not a directory"):
        Pipeline(store="/dev/null")


def test_a_store_under_a_file_cannot_be_created_and_says_why(tmp_path):
    (tmp_path / "afile").write_text("x")
    where = tmp_path / "afile" / "store"
    with pytest.raises(StoreLocationError, match=rf"store {where} cannot be created: "
                                                 rf"{tmp_path / 'afile'} is not a directory"):
        Pipeline(store=str(where))


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_a_store_where_folders_cannot_be_made_is_refused_naming_it():
    with pytest.raises(StoreLocationError, match=r"store /proc/nope cannot be created"):
        Pipeline(store="/proc/nope")
    assert not os.path.exists("/proc/nope")


def test_checking_a_new_store_creates_nothing(tmp_path):
    Pipeline(store=str(tmp_path / "a" / "b"))
    assert not (tmp_path / "a").exists()


def test_an_empty_store_path_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreLocationError, match=r"the store path is empty"):
        Pipeline(store="")


def test_an_empty_file_url_store_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreLocationError, match=r"the store path is empty \('file://'\)"):
        Pipeline(store="file://")


def test_an_unknown_store_protocol_is_named_with_how_to_install_filesystems():
    with pytest.raises(StoreLocationError, match=r"unknown storage protocol 'nosuchproto'.*"
                                                 r"pip install s3fs"):
        Pipeline(store="nosuchproto://x")


def test_a_store_protocol_not_installed_says_what_to_pip_install(monkeypatch):
    from fsspec.registry import known_implementations

    monkeypatch.setitem(known_implementations, "fakeproto", {
        "class": "nosuchpkg_pipelite_test.FakeFileSystem",
        "err": "Install nosuchpkg_pipelite_test to access fakeproto"})
    with pytest.raises(StoreLocationError, match=r"the 'fakeproto' filesystem is not installed "
                                                 r".*pip install nosuchpkg_pipelite_test"):
        Pipeline(store="fakeproto://bucket/x")


def test_storage_options_that_are_not_a_mapping_are_refused():
    with pytest.raises(StoreLocationError, match=r"storage_options must be a mapping .*not int"):
        Pipeline(store="memory://bad-options", storage_options=5)


def test_storage_options_with_a_store_object_are_refused_not_ignored(tmp_path):
    with pytest.raises(StoreLocationError, match=r"pass them to Store\(url, storage_options"):
        Pipeline(store=pipelite.Store(str(tmp_path)), storage_options={"anon": True})


def test_an_executor_without_submit_is_refused(store_dir):
    with pytest.raises(InvalidArgumentError, match=r"executor must have a submit\(\) method"):
        Pipeline(store=str(store_dir), executor=5)


def test_a_registry_that_is_not_a_registry_is_refused(store_dir):
    with pytest.raises(InvalidArgumentError, match=r"registry must be a pipelite\.Registry"):
        Pipeline(store=str(store_dir), registry={})


# -- declaring stages -----------------------------------------------------------------------
def test_outputs_that_are_not_a_name_are_refused_naming_the_stage():
    def f():
        return 1

    with pytest.raises(StageDefinitionError, match=r"stage 'f': outputs=123 \(int\) is not an "
                                                   r"artifact name: pass outputs='name'"):
        stage(outputs=123)(f)


def test_duplicate_output_names_are_refused_naming_the_duplicate():
    def f():
        return 1, 2

    with pytest.raises(StageDefinitionError, match=r"stage 'f' declares output 'x' twice"):
        stage(outputs=["x", "x"])(f)


def test_an_output_named_twice_by_name_and_artifact_class_is_refused():
    class TrainData(Artifact):
        pass

    def f():
        return 1, 2

    with pytest.raises(StageDefinitionError, match=r"declares output 'train_data' twice"):
        stage(outputs=["train_data", TrainData])(f)


def test_env_that_is_not_a_list_of_names_is_refused():
    def f():
        return {"a": 1}

    with pytest.raises(StageDefinitionError, match=r"env=5 \(int\) is not a list of "
                                                   r"environment variable names"):
        stage(env=5)(f)


def test_a_result_with_two_values_for_one_artifact_is_refused(pipeline):
    class TrainData(Artifact):
        pass

    @stage
    def both():
        return {"train_data": 1, TrainData: 2}

    with pytest.raises(StageOutputError, match=r"stage 'both' returned two values for artifact "
                                               r"'train_data' \(keys 'train_data' and TrainData"):
        pipeline.run("both")


def test_a_stage_name_longer_than_200_characters_is_refused():
    def f():
        return {"a": 1}

    with pytest.raises(InvalidNameError, match=r"is too long: at most 200 characters"):
        stage("s" * 201)(f)


def test_a_200_character_stage_name_runs_and_keeps_status_working(pipeline):
    @stage("s" * 200, outputs="a")
    def f():
        return 1

    pipeline.run()
    assert [s.state for s in pipeline.status()] == ["fresh"]


def test_an_artifact_name_longer_than_200_characters_is_refused():
    def f():
        return 1

    with pytest.raises(InvalidNameError, match=r"artifact name .* is too long"):
        stage(outputs="a" * 201)(f)


# -- user formats ---------------------------------------------------------------------------
class Model:
    def __init__(self, w=1):
        self.w = w


def _write(m, path):
    with open(path, "w") as f:
        f.write(str(m.w))


def _read(path):
    with open(path) as f:
        return Model(int(f.read()))


def test_a_user_format_whose_save_fails_is_an_error_not_a_silent_pickle(pipeline, store_dir,
                                                                         user_formats):
    def broken_save(m, path):
        raise RuntimeError("disk says no")

    register_format(Model, broken_save, _read, ext=".mdl", name="model-format")

    @stage(outputs="m")
    def make():
        return Model()

    with pytest.raises(FormatSaveError, match=r"stage 'make', output 'm': the registered format "
                                              r"'model-format' failed to save a Model: "
                                              r"RuntimeError: disk says no") as info:
        pipeline.run("make")
    assert isinstance(info.value, StageOutputError)
    assert isinstance(info.value.__cause__, RuntimeError)
    one_line(info.value)
    assert not list((store_dir / "objects").rglob("*.pkl"))


def test_a_builtin_format_refusing_a_value_still_falls_back_to_pickle(pipeline):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    df = pd.DataFrame({"mixed": [1, "a", 2.5]})

    @stage(outputs="frame")
    def make():
        return df

    pipeline.run("make")
    assert pipeline.status()[0].outputs[0].format == "pickle"


def test_a_builtin_format_failing_after_writing_bytes_is_not_pickled(tmp_path):
    fmt = _formats._BUILTIN[0]
    written = tmp_path / "half.npy"
    written.write_bytes(b"\x93NUMPY")
    assert not fmt.falls_back_to_pickle(ValueError("late"), str(written))
    assert fmt.falls_back_to_pickle(ValueError("refused"), str(tmp_path / "never-written"))
    assert not fmt.falls_back_to_pickle(OSError("disk full"), str(tmp_path / "never-written"))


def test_a_user_format_whose_load_fails_is_reported_once_not_as_corruption(pipeline,
                                                                          user_formats):
    calls = []

    def broken_load(path):
        calls.append(path)
        raise ValueError("bad magic")

    register_format(Model, _write, broken_load, ext=".mdl", name="model-format")

    @stage(outputs="m")
    def make():
        return Model(3)

    @stage(outputs="w")
    def use(m):
        return m.w

    with pytest.raises(FormatLoadError, match=r"the registered format 'model-format' failed to "
                                              r"load .*\.mdl: ValueError: bad magic") as info:
        pipeline.run("use")
    assert isinstance(info.value.__cause__, ValueError)
    assert len(calls) == 1  # not recomputed three times as a "corrupt" file
    assert pipeline.status()[0].state == "fresh"  # and its result was not thrown away


@pytest.mark.parametrize("ext", ["", ".", "a/b", "./x", "..mdl", ".a\\b", ".m\0", "." + "x" * 16,
                                 ".m d", ".mdl."])
def test_a_format_extension_that_cannot_be_a_file_name_is_refused(ext, user_formats):
    with pytest.raises(FormatError, match=r"cannot be part of a file name"):
        register_format(Model, _write, _read, ext=ext)


def test_a_format_extension_without_the_dot_gets_one(user_formats):
    assert register_format(Model, _write, _read, ext="mdl").ext == ".mdl"


def test_a_format_for_something_that_is_not_a_type_is_refused(user_formats):
    with pytest.raises(FormatError, match=r"the type whose values the format stores"):
        register_format(Model(), _write, _read, ext=".mdl")


def test_a_format_whose_save_is_not_callable_is_refused(user_formats):
    with pytest.raises(FormatError, match=r"save must be a function"):
        register_format(Model, ".mdl", _read, ext=".mdl")


def test_a_format_named_like_a_builtin_format_is_refused(user_formats):
    with pytest.raises(FormatError, match=r"name='pickle' is a built-in format's name"):
        register_format(Model, _write, _read, ext=".mdl", name="pickle")


# -- the IPython extension ------------------------------------------------------------------
@pytest.fixture
def ip(tmp_path, monkeypatch):
    """A real shell with the extension loaded (as in test_ipy_magics.py)."""
    monkeypatch.chdir(tmp_path)
    # the shell installs its user module as __main__: put the real one back afterwards, or
    # a later test that spawns processes (the dask cluster) fails in multiprocessing
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    shell = InteractiveShell.instance()
    shell.reset(new_session=False)
    shell.run_line_magic("colors", "nocolor")
    shell.run_line_magic("load_ext", "pipelite")
    yield shell
    for mod in ("pipelite", "pipelite_ipy"):
        if mod in shell.extension_manager.loaded:
            shell.run_line_magic("unload_ext", mod)
    shell.config.pop("PipeliteSession", None)


def run_cell(shell, cell):
    with capture_output() as cap:
        result = shell.run_cell(textwrap.dedent(cell))
    return result, cap


def test_a_top_level_return_in_a_stage_cell_is_shown_as_the_cells_syntax_error(ip):
    result, cap = run_cell(ip, "%%stage s\nx = 1\nreturn x\n")
    err = result.error_in_exec
    assert isinstance(err, CellSyntaxError)
    assert err.error.lineno == 3 and "'return' outside function" in err.error.msg
    assert "return x" in cap.stdout and "line 3" in cap.stdout
    assert "pipelite_ipy" not in cap.stdout and "compile(" not in cap.stdout


def test_the_magic_store_refuses_an_empty_path(ip, tmp_path):
    result, _ = run_cell(ip, "%pipelite store ''")
    assert isinstance(result.error_in_exec, UsageError)
    assert "the path is empty" in str(result.error_in_exec)
    assert os.listdir(tmp_path) in ([], [".pipelite"])


def test_the_magic_store_takes_a_quoted_path_without_its_quotes(ip, tmp_path):
    result, cap = run_cell(ip, "%pipelite store 'my store'")
    assert result.success
    assert (tmp_path / "my store").is_dir()


def test_the_magic_store_refuses_an_unknown_protocol_with_a_usage_message(ip):
    result, _ = run_cell(ip, "%pipelite store nosuchproto://x")
    assert isinstance(result.error_in_exec, UsageError)
    assert "unknown storage protocol 'nosuchproto'" in str(result.error_in_exec)
    assert pipelite_ipy.current_session().pipeline.store.url.endswith(".pipelite")


def test_a_stage_cell_naming_an_output_twice_is_refused(ip):
    result, cap = run_cell(ip, "%%stage s -o x x\nx = 1\n")
    assert isinstance(result.error_in_exec, StageDefinitionError)
    assert "declares output 'x' twice" in cap.stdout


# -- the command line -----------------------------------------------------------------------
def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(pipelite.__file__))),
         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pipelite.cli", *args], cwd=cwd,
                          capture_output=True, text=True, env=env)


def test_cli_empty_store_is_refused_not_the_default_store(tmp_path):
    (tmp_path / ".pipelite").mkdir()
    done = cli("--store", "", "status", cwd=tmp_path)
    assert done.returncode == 2
    assert "--store is empty" in done.stderr and "Traceback" not in done.stderr


def test_cli_unknown_store_protocol_is_an_error_not_a_traceback(tmp_path):
    done = cli("--store", "nosuchproto://x", "status", cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown storage protocol 'nosuchproto'" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_run_of_a_file_that_is_not_a_notebook_is_an_error(tmp_path):
    (tmp_path / "bad.ipynb").write_text("not json")
    done = cli("run", "bad.ipynb", cwd=tmp_path)
    assert done.returncode == 2
    assert "bad.ipynb is not a readable Jupyter notebook" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_run_of_a_directory_is_an_error(tmp_path):
    (tmp_path / "nb.ipynb").mkdir()
    done = cli("run", "nb.ipynb", cwd=tmp_path)
    assert done.returncode == 2
    assert "nb.ipynb is a directory" in done.stderr and "Traceback" not in done.stderr


def test_load_verify_that_is_not_a_bool_is_refused_naming_the_levels(tmp_path):
    import pipelite
    from pipelite import Pipeline, stage

    @stage(outputs="v")
    def v():
        return 1

    p = Pipeline(store=str(tmp_path / "s"))
    p.run("v")
    with pytest.raises(pipelite.InvalidArgumentError, match="Pipeline\\(verify='always'\\)"):
        p.load("v", verify="yes")
    assert p.load("v", verify=True) == 1


def test_a_store_object_made_directly_checks_its_location_too():
    from pipelite import Store, StoreLocationError

    with pytest.raises(StoreLocationError, match="empty"):
        Store("")
    with pytest.raises(StoreLocationError, match="unknown storage protocol"):
        Store("nosuchproto://x")


