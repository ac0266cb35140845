"""The IPython extension, driven through a real InteractiveShell: every magic, every promise."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import pipelite
import pipelite_ipy
from pipelite import REGISTRY
from pipelite_ipy.cell import CellSyntaxError

LOADED = re.compile(r"\[pipelite\] (\S+): loaded from store \(run \d{4}-\d\d-\d\d \d\d:\d\d, "
                    r"saved [\d.]+ (µs|ms|s|min) of compute\)")


def run(shell: InteractiveShell, cell: str):
    """Run a cell as a notebook would; return (result, captured output)."""
    with capture_output() as cap:
        result = shell.run_cell(textwrap.dedent(cell))
    return result, cap


def ok(shell: InteractiveShell, cell: str):
    result, cap = run(shell, cell)
    assert result.success, (result.error_before_exec or result.error_in_exec, cap.stdout)
    return cap


def memory_mapped(arr) -> bool:
    """Whether ``arr``'s memory is a file mapping (however numpy wraps it)."""
    import mmap

    base = arr
    while base is not None:
        if isinstance(base, (mmap.mmap, np.memmap)):
            return True
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return False


def ran(tmp_path) -> list[str]:
    """The stages that really executed, from the side-effect log the cells append to."""
    log = tmp_path / "ran.log"
    return log.read_text().split() if log.exists() else []


GEN = """\
%%stage gen_data
import numpy as np
open(LOG, "a").write("gen_data\\n")
print("generating")
train_data = np.arange(12.0).reshape(3, 4) * SCALE
"""

TRAIN = """\
%%stage train_model
open(LOG, "a").write("train_model\\n")
model_weights = normalise(train_data.mean(axis=0))
print("weights", model_weights.round(3))
"""

HELPERS = """\
SCALE = 2
def normalise(v):
    return v / v.sum()
"""


@pytest.fixture
def two_stages(ip):
    ok(ip, HELPERS)
    ok(ip, GEN)
    ok(ip, TRAIN)
    return ip


# -- loading -----------------------------------------------------------------------------------
def test_load_ext_pipelite_registers_both_magics(ip):
    assert ip.find_cell_magic("stage") is not None
    assert ip.find_line_magic("pipelite") is not None
    assert pipelite_ipy.current_session().shell is ip


def test_load_ext_pipelite_ipy_loads_the_same_extension(ip):
    ip.run_line_magic("unload_ext", "pipelite")
    ip.run_line_magic("load_ext", "pipelite_ipy")
    assert ip.find_cell_magic("stage") is not None
    assert pipelite_ipy.current_session() is not None


def test_unload_ext_removes_magics_session_and_listener(ip):
    from pipelite import events

    session = pipelite_ipy.current_session()
    ip.run_line_magic("unload_ext", "pipelite")
    assert ip.find_cell_magic("stage") is None
    assert ip.find_line_magic("pipelite") is None
    assert pipelite_ipy.current_session() is None
    assert session._on_event not in events._listeners


def test_reload_ext_gives_a_working_extension(ip, tmp_path):
    ok(ip, HELPERS)
    ok(ip, GEN)
    ip.run_line_magic("reload_ext", "pipelite")
    cap = ok(ip, GEN)
    assert LOADED.search(cap.stdout)
    assert ran(tmp_path) == ["gen_data"]


def test_loading_is_fast_and_does_not_import_ipywidgets():
    code = ("import sys, time; from IPython.core.interactiveshell import InteractiveShell; "
            "ip = InteractiveShell.instance(); t = time.perf_counter(); "
            "ip.run_line_magic('load_ext', 'pipelite'); "
            "print(time.perf_counter() - t, 'ipywidgets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[1] == "False"
    assert float(out[0]) < 1.0


# -- %%stage -----------------------------------------------------------------------------------
def test_first_run_computes_shows_output_and_binds_outputs(ip, tmp_path):
    ok(ip, HELPERS)
    cap = ok(ip, GEN)
    assert "generating" in cap.stdout
    assert "gen_data: ran in" in cap.stdout
    assert ran(tmp_path) == ["gen_data"]
    assert ip.user_ns["train_data"].shape == (3, 4)


def test_fresh_stage_loads_from_store_and_replays_its_output(two_stages, tmp_path):
    ip = two_stages
    del ip.user_ns["model_weights"]
    cap = ok(ip, TRAIN)
    assert ran(tmp_path) == ["gen_data", "train_model"]  # nothing re-executed
    assert LOADED.search(cap.stdout).group(1) == "train_model"
    assert "weights [0.182 0.227 0.273 0.318]" in cap.stdout
    assert ip.user_ns["model_weights"].round(3).tolist() == [0.182, 0.227, 0.273, 0.318]


def test_loaded_numpy_outputs_are_read_only_memory_maps(two_stages):
    ip = two_stages
    ok(ip, GEN)
    arr = ip.user_ns["train_data"]
    assert memory_mapped(arr)
    result, cap = run(ip, "train_data[0, 0] = 99")
    assert isinstance(result.error_in_exec, ValueError)
    assert "read-only" in str(result.error_in_exec)


def test_inputs_are_free_names_that_other_stages_produce(two_stages):
    st = REGISTRY.get("train_model")
    assert st.inputs == ("train_data",)
    assert "normalise" in st.reads  # a helper: tracked by code, not an input


def test_dash_i_declares_the_inputs(two_stages):
    ok(two_stages, "%%stage summary -i model_weights\ntotal = float(model_weights.sum())\n")
    assert REGISTRY.get("summary").inputs == ("model_weights",)


def test_outputs_are_top_level_bindings_minus_imports_defs_and_private_names(ip):
    ok(ip, """\
    %%stage shapes
    import math
    from os import path as _p
    def area(r):
        return math.pi * r * r
    _tmp = 3
    radius = _tmp
    circle = area(radius)
    """)
    assert REGISTRY.get("shapes").outputs == ("radius", "circle")


def test_dash_o_selects_the_outputs(ip):
    ok(ip, "%%stage pick -o kept\nkept = 1\nscratch = 2\n")
    assert REGISTRY.get("pick").outputs == ("kept",)
    status = {s.name: s for s in pipelite_ipy.current_session().pipeline.status()}
    assert [o.name for o in status["pick"].outputs] == ["kept"]


def test_define_registers_without_running(ip, tmp_path):
    ok(ip, HELPERS)
    cap = ok(ip, GEN.replace("%%stage gen_data", "%%stage gen_data --define"))
    assert "gen_data: defined (inputs: none; outputs: train_data)" in cap.stdout
    assert ran(tmp_path) == []
    assert "train_data" not in ip.user_ns
    assert {s.name: s.state for s in pipelite_ipy.current_session().pipeline.status()} == {
        "gen_data": "missing"}


def test_force_recomputes_a_fresh_stage(two_stages, tmp_path):
    ok(two_stages, TRAIN.replace("%%stage train_model", "%%stage train_model --force"))
    assert ran(tmp_path) == ["gen_data", "train_model", "train_model"]


def test_editing_a_comment_recomputes_nothing(two_stages, tmp_path):
    cap = ok(two_stages, TRAIN + "# a comment\n\n")
    assert LOADED.search(cap.stdout)
    assert ran(tmp_path) == ["gen_data", "train_model"]


def test_editing_a_helper_recomputes_the_stage_that_calls_it(two_stages, tmp_path):
    ip = two_stages
    ok(ip, "def normalise(v):\n    return v / v.max()\n")
    ok(ip, GEN)
    cap = ok(ip, TRAIN)
    assert ran(tmp_path) == ["gen_data", "train_model", "train_model"]
    assert "weights [0.571 0.714 0.857 1.   ]" in cap.stdout


def test_editing_a_global_constant_recomputes_what_reads_it(two_stages, tmp_path):
    ip = two_stages
    ok(ip, "SCALE = 3")
    cap = ok(ip, TRAIN)  # gen_data reads SCALE: it runs first, as train_model's upstream
    assert ran(tmp_path)[2:] == ["gen_data", "train_model"]
    assert "[pipelite] running stage 'gen_data' (1/2)" in cap.stdout


def test_upstream_content_change_reruns_downstream(two_stages, tmp_path):
    ip = two_stages
    ok(ip, GEN.replace("* SCALE", "* SCALE + 1"))
    ok(ip, TRAIN)
    assert ran(tmp_path) == ["gen_data", "train_model", "gen_data", "train_model"]


def test_identical_upstream_output_keeps_downstream_fresh(two_stages, tmp_path):
    ip = two_stages
    ok(ip, GEN.replace("print(\"generating\")", "print('generating again')"))
    cap = ok(ip, TRAIN)
    assert ran(tmp_path) == ["gen_data", "train_model", "gen_data"]
    assert LOADED.search(cap.stdout)


def test_changing_a_closures_captured_value_recomputes(ip, tmp_path):
    ok(ip, "def make_scaler(k):\n    def scale(x):\n        return x * k\n    return scale\n"
           "scale = make_scaler(2)\n")
    cell = "%%stage scaled\nopen(LOG, 'a').write('scaled\\n')\nscaled = scale(10)\n"
    ok(ip, cell)
    ok(ip, cell)
    assert ran(tmp_path) == ["scaled"]
    ok(ip, "scale = make_scaler(3)")
    ok(ip, cell)
    assert ran(tmp_path) == ["scaled", "scaled"]
    assert ip.user_ns["scaled"] == 30


def test_rich_displays_are_captured_and_replayed(ip):
    cell = ("%%stage shown\nfrom IPython.display import HTML, display\n"
            "display(HTML('<b>bold</b>'))\nvalue = 1\n")
    first = ok(ip, cell)
    second = ok(ip, cell)
    assert [o.data["text/html"] for o in first.outputs] == ["<b>bold</b>"]
    assert [o.data["text/html"] for o in second.outputs] == ["<b>bold</b>"]
    assert LOADED.search(second.stdout)


def test_stderr_is_captured_and_replayed(ip):
    cell = "%%stage warn\nimport sys\nprint('careful', file=sys.stderr)\nvalue = 1\n"
    assert "careful" in ok(ip, cell).stderr
    assert "careful" in ok(ip, cell).stderr


def test_last_expression_is_displayed_and_replayed(ip):
    cell = "%%stage answer\nanswer = 6 * 7\nanswer\n"
    first = ok(ip, cell)
    second = ok(ip, cell)
    assert [o.data["text/plain"] for o in first.outputs] == ["42"]
    assert [o.data["text/plain"] for o in second.outputs] == ["42"]


def test_matplotlib_figures_are_captured_and_replayed(ip):
    pytest.importorskip("matplotlib")
    pytest.importorskip("matplotlib_inline")
    # what `%matplotlib inline` does in a kernel (a bare shell has no GUI loop for the magic)
    ok(ip, "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
           "matplotlib.interactive(True)\n"
           "from matplotlib_inline.backend_inline import configure_inline_support\n"
           "configure_inline_support(get_ipython(), 'inline')\n")
    cell = ("%%stage plot\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
            "ax.plot([1, 2, 3])\npoints = 3\n")
    first = ok(ip, cell)
    second = ok(ip, cell)
    pngs = [o.data["image/png"] for o in first.outputs if "image/png" in o.data]
    assert len(pngs) == 1
    assert [o.data["image/png"] for o in second.outputs if "image/png" in o.data] == pngs


def test_cells_are_transformed_like_ipython_cells(ip):
    ok(ip, "%%stage shell_out\nlisting = !echo hello\nlines = list(listing)\n")
    assert ip.user_ns["lines"] == ["hello"]


def test_a_failing_cell_shows_the_users_own_lines_stores_nothing_and_fails(ip, tmp_path):
    ok(ip, HELPERS)
    result, cap = run(ip, """\
    %%stage broken
    x = 1
    y = normalise([1, 2])
    z = 3
    """)
    assert isinstance(result.error_in_exec, AttributeError)
    out = cap.stdout
    assert "line 3" in out and "y = normalise([1, 2])" in out  # the cell's own line 3
    assert "return v / v.sum()" in out  # and the helper it called
    assert "pipelite/" not in out and "pipelite_ipy/" not in out
    assert "interactiveshell.py" not in out
    assert "stage 'broken' failed; nothing was stored" in out
    status = {s.name: s for s in pipelite_ipy.current_session().pipeline.status()}
    assert status["broken"].state == "failed"
    assert status["broken"].outputs == ()
    assert ok(ip, "1 + 1")  # the shell is still usable


def test_a_fixed_failing_cell_runs_and_is_stored(ip):
    run(ip, "%%stage flaky\nvalue = 1 / 0\n")
    ok(ip, "%%stage flaky\nvalue = 1 / 1\n")
    state = {s.name: s.state for s in pipelite_ipy.current_session().pipeline.status()}
    assert state["flaky"] == "fresh"


def test_a_syntax_error_points_at_the_cell_line(ip):
    result, cap = run(ip, "%%stage bad\nx = 1\nx = = 2\n")
    assert isinstance(result.error_in_exec, CellSyntaxError)
    assert "line 3" in cap.stdout and "x = = 2" in cap.stdout
    assert "SyntaxError" in cap.stdout and "Traceback" not in cap.stdout


@pytest.mark.parametrize("line, message", [
    ("%%stage", "the following arguments are required: name"),
    ("%%stage x --bogus", "unrecognized arguments: --bogus"),
    ("%%stage x --force --define", "use --force or --define"),
])
def test_bad_stage_arguments_give_a_usage_error(ip, line, message):
    result, cap = run(ip, f"{line}\nvalue = 1\n")
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    assert "Traceback" not in cap.stdout


@pytest.mark.parametrize("cell, message", [
    ("%%stage 9lives\nvalue = 1\n", "InvalidNameError: invalid stage name '9lives'"),
    ("%%stage x -o 'not valid'\nvalue = 1\n", "InvalidNameError: invalid artifact name"),
    ("%%stage x -o missing\nvalue = 1\n", "StageOutputError: stage 'x' did not bind ['missing']"),
])
def test_pipelite_errors_are_one_line_messages(ip, cell, message):
    result, cap = run(ip, cell)
    assert isinstance(result.error_in_exec, pipelite.PipeliteError)
    assert cap.stdout.strip().startswith(message)
    assert "Traceback" not in cap.stdout and len(cap.stdout.strip().splitlines()) == 1


def test_a_second_producer_of_an_artifact_is_a_one_line_error(two_stages):
    result, cap = run(two_stages, "%%stage other\ntrain_data = 1\n")
    assert isinstance(result.error_in_exec, pipelite.DuplicateProducerError)
    assert "both stage 'gen_data' and stage 'other'" in cap.stdout
    assert "Traceback" not in cap.stdout


@pytest.mark.parametrize("body, example", [
    ("train_data = train_data + 1", "train_data2 = train_data + 1"),
    ("train_data += 1", "train_data2 = train_data + 1"),
    ("train_data = np.log1p(train_data)", "train_data2 = np.log1p(train_data)"),
])
def test_a_cell_that_reassigns_its_input_says_to_use_a_new_name(two_stages, tmp_path, body,
                                                               example):
    ip = two_stages
    result, cap = run(ip, f"%%stage rebind\n{body}\n")
    assert isinstance(result.error_in_exec, pipelite.DuplicateProducerError)
    assert isinstance(result.error_in_exec, pipelite_ipy.session.ReassignedInputError)
    assert cap.stdout.strip() == (
        "ReassignedInputError: stage 'rebind' assigns 'train_data', which stage 'gen_data' "
        f"produces: assign the result to a new name (e.g. {example}), or choose the cell's "
        "outputs with -o")
    assert "REGISTRY.remove" not in cap.stdout
    assert "rebind" not in REGISTRY  # nothing registered
    ok(ip, "%%stage rebind\ntrain_data2 = train_data + 1\n")  # the suggested fix works
    assert ip.user_ns["train_data2"][0, 1] == 3.0
    assert ran(tmp_path).count("gen_data") == 1


def test_reassigning_an_input_named_with_dash_i_is_refused_too(ip):
    result, cap = run(ip, "%%stage loop -i a\na = a + 1\n")
    assert isinstance(result.error_in_exec, pipelite_ipy.session.ReassignedInputError)
    assert "stage 'loop' assigns 'a', which it also reads as an input" in cap.stdout


# -- %pipelite -----------------------------------------------------------------------------------
def test_pipelite_run_binds_every_output(two_stages, tmp_path):
    ip = two_stages
    for name in ("train_data", "model_weights"):
        del ip.user_ns[name]
    cap = ok(ip, "%pipelite run")
    assert "ran 0 stage(s); 2 fresh (gen_data, train_model); bound train_data, model_weights" \
        in cap.stdout
    assert ip.user_ns["model_weights"].shape == (4,)
    assert ran(tmp_path) == ["gen_data", "train_model"]


def test_pipelite_run_name_runs_stale_upstreams_and_binds_the_targets(two_stages, tmp_path):
    ip = two_stages
    ok(ip, "SCALE = 5")
    del ip.user_ns["model_weights"]
    cap = ok(ip, "%pipelite run train_model")
    assert ran(tmp_path)[2:] == ["gen_data", "train_model"]
    assert "bound model_weights" in cap.stdout
    assert "model_weights" in ip.user_ns


def test_pipelite_run_force_recomputes(two_stages, tmp_path):
    ok(two_stages, "%pipelite run train_model --force")
    assert ran(tmp_path) == ["gen_data", "train_model", "train_model"]


def test_pipelite_run_dry_run_says_what_would_run_and_runs_nothing(two_stages, tmp_path):
    ip = two_stages
    ok(ip, "SCALE = 4")
    cap = ok(ip, "%pipelite run --dry-run")
    assert "would run gen_data: global 'SCALE' changed" in cap.stdout
    assert "would run train_model: upstream stage 'gen_data' is stale" in cap.stdout
    assert ran(tmp_path) == ["gen_data", "train_model"]


def test_pipelite_run_dry_run_when_everything_is_fresh(two_stages):
    assert "nothing to run" in ok(two_stages, "%pipelite run --dry-run").stdout


def test_pipelite_run_with_function_stages_and_parameters(ip):
    ok(ip, """\
    from pipelite import stage
    @stage(outputs="total")
    def total(*, n: int = 3):
        return sum(range(n))
    """)
    ok(ip, "%pipelite run total")
    assert ip.user_ns["total"] == 3


def test_a_missing_parameter_is_a_one_line_error(ip):
    ok(ip, """\
    from pipelite import stage
    @stage("train")
    class Train:
        def __init__(self, epochs: int):
            self.epochs = epochs
        def run(self):
            return {"w": self.epochs}
    """)
    result, cap = run(ip, "%pipelite run train")
    assert isinstance(result.error_in_exec, pipelite.ParameterError)
    assert cap.stdout.strip().startswith("ParameterError: stage 'train' needs parameter 'epochs'")
    assert "Traceback" not in cap.stdout


def test_pipelite_status_is_a_text_and_html_table(two_stages):
    ok(two_stages, "SCALE = 7")
    cap = ok(two_stages, "%pipelite status")
    (out,) = cap.outputs
    text, page = out.data["text/plain"], out.data["text/html"]
    assert text.splitlines()[0].split()[:2] == ["STAGE", "STATE"]
    assert re.search(r"gen_data\s+stale", text) and "global 'SCALE' changed" in text
    assert "<table" in page and ">stale</span>" in page and "train_model" in page


def test_pipelite_explain_says_why(two_stages):
    ok(two_stages, "def normalise(v):\n    return v * 2\n")
    cap = ok(two_stages, "%pipelite explain train_model")
    assert "stage 'train_model' is stale" in cap.stdout
    assert "helper 'normalise' changed" in cap.stdout


def test_pipelite_explain_unknown_stage_is_one_line(two_stages):
    result, cap = run(two_stages, "%pipelite explain trian_model")
    assert cap.stdout.strip() == ("UnknownStageError: no stage named 'trian_model'; did you "
                                  "mean 'train_model'?")


def test_pipelite_graph_mermaid_renders_as_markdown(two_stages):
    (out,) = ok(two_stages, "%pipelite graph").outputs
    assert out.data["text/markdown"].startswith("```mermaid\nflowchart LR")
    assert out.data["text/markdown"].rstrip().endswith("```")
    assert out.data["text/plain"].startswith("flowchart LR")


def test_pipelite_graph_draws_stages_and_artifacts_with_dash_dash_artifacts(two_stages):
    (out,) = ok(two_stages, "%pipelite graph").outputs
    assert '-->|"train_data"|' in out.data["text/plain"] and "([" not in out.data["text/plain"]
    (out,) = ok(two_stages, "%pipelite graph --artifacts").outputs
    assert '(["train_data"]):::artifact' in out.data["text/plain"]


def test_pipelite_graph_dot_prints_dot(two_stages):
    assert ok(two_stages, "%pipelite graph --format dot").stdout.startswith("digraph pipelite {")


def test_pipelite_graph_svg_displays_svg(two_stages):
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("Graphviz is not installed")
    (out,) = ok(two_stages, "%pipelite graph --format svg").outputs
    assert "<svg" in out.data["image/svg+xml"]


def test_pipelite_load_binds_artifacts_and_stage_outputs(two_stages):
    ip = two_stages
    for name in ("train_data", "model_weights"):
        del ip.user_ns[name]
    ok(ip, "%pipelite load model_weights")
    assert ip.user_ns["model_weights"].flags.writeable is False
    ok(ip, "%pipelite load gen_data")
    assert ip.user_ns["train_data"].shape == (3, 4)


def test_pipelite_load_of_a_stale_artifact_is_one_line(two_stages):
    ok(two_stages, "SCALE = 9")
    result, cap = run(two_stages, "%pipelite load train_data")
    assert cap.stdout.startswith("StaleArtifactError: artifact 'train_data' is not up to date")


def test_pipelite_invalidate_forgets_results(two_stages, tmp_path):
    ip = two_stages
    cap = ok(ip, "%pipelite invalidate train_model")
    assert "train_model: forgot 1 stored result(s)" in cap.stdout
    ok(ip, TRAIN)
    assert ran(tmp_path) == ["gen_data", "train_model", "train_model"]


def test_pipelite_gc_keeps_the_newest_results(two_stages):
    ip = two_stages
    ok(ip, "SCALE = 3")
    ok(ip, GEN)
    cap = ok(ip, "%pipelite gc --keep 1")
    assert re.search(r"gc: removed 1 record\(s\) and \d+ object\(s\)", cap.stdout)


def test_pipelite_store_shows_and_switches_the_store(two_stages, tmp_path):
    ip = two_stages
    assert ok(ip, "%pipelite store").stdout.strip() == \
        f"[pipelite] store: {tmp_path / '.pipelite'}"
    ok(ip, "%pipelite store elsewhere")
    assert pipelite_ipy.current_session().pipeline.store.url == str(tmp_path / "elsewhere")
    ok(ip, GEN)  # an empty store: computed again
    assert ran(tmp_path) == ["gen_data", "train_model", "gen_data"]


def test_pipelite_panel_shows_the_panel_or_says_it_is_not_there(ip):
    import importlib.util

    cap = ok(ip, "%pipelite panel")
    if importlib.util.find_spec("pipelite_ipy.panel") is None:
        assert "the panel is not available yet" in cap.stdout
    else:
        assert any("application/vnd.jupyter.widget-view+json" in o.data or
                   "PipelinePanel" in o.data.get("text/plain", "") for o in cap.outputs)


@pytest.mark.parametrize("line, message", [
    ("%pipelite", "%pipelite needs a command: run, status"),
    ("%pipelite frobnicate", "invalid choice: 'frobnicate'"),
    ("%pipelite explain", "the following arguments are required: NAME"),
    ("%pipelite gc --keep many", "invalid int value: 'many'"),
    ("%pipelite gc --keep -1", "--keep must be 1 or more"),
    ("%pipelite run --keep 2", "unrecognized arguments: --keep"),
    ("%pipelite graph --format png", "invalid choice: 'png'"),
    ("%pipelite load", "the following arguments are required: NAME"),
])
def test_bad_pipelite_arguments_give_a_usage_message(ip, line, message):
    result, cap = run(ip, line)
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    assert "Traceback" not in cap.stdout + cap.stderr


def test_pipelite_help_lists_every_command(ip):
    doc = ip.object_inspect("%pipelite")["docstring"]
    for command in ("run", "status", "explain", "graph", "load", "invalidate", "gc", "store",
                    "panel", "--dry-run", "--keep", "--format"):
        assert command in doc
    assert "--define" in ip.object_inspect("%%stage")["docstring"]


def test_cell_output_attachment_is_json(two_stages):
    events = pipelite_ipy.current_session().pipeline.attachment("train_model", "outputs")
    assert json.loads(json.dumps(events)) == events
    assert events[0] == {"stream": "stdout", "text": "weights [0.182 0.227 0.273 0.318]\n"}


def test_a_failing_function_stage_shows_the_users_function_not_pipelite(ip):
    ok(ip, """\
    from pipelite import stage
    @stage(outputs="parsed")
    def parse():
        return int("not a number")
    """)
    result, cap = run(ip, "%pipelite run parse")
    assert isinstance(result.error_in_exec, ValueError)
    assert 'return int("not a number")' in cap.stdout
    assert "pipelite/" not in cap.stdout and "pipelite_ipy/" not in cap.stdout
    assert "stage 'parse' failed; nothing was stored" in cap.stdout


def test_an_interrupted_cell_shows_only_the_users_lines_and_stores_nothing(ip):
    result, cap = run(ip, "%%stage slow\nv = 42\nraise KeyboardInterrupt\n")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    out = cap.stdout
    assert "raise KeyboardInterrupt" in out
    assert "pipelite/" not in out and "pipelite_ipy/" not in out
    assert "nothing was stored" in out
    status = {s.name: s for s in pipelite_ipy.current_session().pipeline.status()}
    assert status["slow"].state == "failed" and status["slow"].outputs == ()


def test_switching_to_a_store_that_cannot_be_written_is_a_usage_error(ip, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result, _ = run(ip, f"%pipelite store {blocker}/store")
    assert isinstance(result.error_in_exec, UsageError)
    assert "cannot use" in str(result.error_in_exec)
    _, cap = run(ip, f"%pipelite store {tmp_path / 'brand-new'}")
    assert "(a new, empty store)" in cap.stdout


def test_gc_keep_must_be_at_least_one_in_the_magic(ip):
    result, _ = run(ip, "%pipelite gc --keep 0")
    assert isinstance(result.error_in_exec, UsageError)
    assert "1 or more" in str(result.error_in_exec)


def test_numpy_outputs_are_read_only_right_after_the_first_run(ip):
    ok(ip, "%%stage g\nimport numpy as np\narr = np.arange(5.0)\n")
    assert not ip.user_ns["arr"].flags.writeable
    result, _ = run(ip, "arr[0] = 1")
    assert isinstance(result.error_in_exec, ValueError)


def test_the_final_expression_is_displayed_but_does_not_set_out(ip):
    with_hist = ip.run_cell("%%stage answer\nanswer = 6 * 7\nanswer\n", store_history=True)
    assert with_hist.success
    assert with_hist.result is None
    assert 42 not in ip.user_ns["Out"].values()


def test_dash_i_replaces_inputs_and_tracks_other_outputs_as_globals(ip, tmp_path):
    log = tmp_path / "ran.log"
    ok(ip, "%%stage up1\nu1 = 1\n")
    ok(ip, f"%%stage up2\nopen({str(log)!r}, 'a').write('up2\\n')\nu2 = 2\n")
    ok(ip, "%%stage down -i u1\nres = u1 + u2\n")
    assert REGISTRY.get("down").inputs == ("u1",)  # u2 is not an input
    ok(ip, "u2 = 10")  # the global changed; up2 is untouched
    cap = ok(ip, "%%stage down -i u1\nres = u1 + u2\n")
    assert "down: ran in" in cap.stdout and ip.user_ns["res"] == 11
    assert log.read_text().split() == ["up2"]  # up2 was not run first


def test_dash_o_is_a_way_out_of_reassigning_an_input(ip):
    ok(ip, "%%stage gen\nimport numpy as np\ntrain_data = np.arange(3.0)\n")
    ok(ip, "%%stage rebind -o total\n"
           "train_data = train_data + 1\ntotal = float(train_data.sum())\n")
    assert REGISTRY.get("rebind").outputs == ("total",)
    assert ip.user_ns["total"] == 6.0


def test_a_global_set_with_global_is_not_restored_on_load(ip):
    cell = "%%stage glob\ndef setter():\n    global GX\n    GX = 5\nsetter()\nkept = 1\n"
    ok(ip, cell)
    del ip.user_ns["GX"], ip.user_ns["kept"]
    cap = ok(ip, cell)
    assert "loaded from store" in cap.stdout
    assert ip.user_ns["kept"] == 1 and "GX" not in ip.user_ns


def test_a_stage_cell_is_analysed_once_per_run(ip, monkeypatch):
    """The probe that finds a cell's inputs and the stage registered share one analysis of
    the code (issue 13): it depends on the source alone."""
    import pipelite._cellcode as cellcode

    calls: list[str] = []
    analyze = cellcode.analyze

    def counting(source: str):
        calls.append(source)
        return analyze(source)

    monkeypatch.setattr(cellcode, "analyze", counting)
    ok(ip, "%%stage base\nbase = 20\n")
    ok(ip, "%%stage answer\nanswer = base + 22\n")
    calls.clear()
    cap = ok(ip, "%%stage answer\nanswer = base + 22\n")
    assert LOADED.search(cap.stdout) and ip.user_ns["answer"] == 42
    assert calls == ["answer = base + 22\n"]
    assert REGISTRY.get("answer").inputs == ("base",)


# -- a cell renamed in place (issue 10, item 7) ------------------------------------------------
def run_in(ip, cell: str, cell_id: str | None):
    """Run ``cell`` as the notebook cell ``cell_id`` (JupyterLab sends its id with each run)."""
    with capture_output() as cap:
        result = ip.run_cell(cell, cell_id=cell_id)
    return result, cap


def test_a_cell_run_again_under_a_new_name_replaces_its_own_stage(ip, tmp_path):
    first, _ = run_in(ip, "%%stage prep\nclean = [1, 2, 3]\n", "cell-1")
    assert first.success
    result, cap = run_in(ip, "%%stage prepare\nclean = [1, 2, 3, 4]\n", "cell-1")
    assert result.success, cap.stdout
    assert "this cell defined stage 'prep', now 'prepare'" in cap.stdout
    assert "prepare" in REGISTRY and "prep" not in REGISTRY
    assert ip.user_ns["clean"] == [1, 2, 3, 4]
    states = {s.name: s for s in pipelite_ipy.current_session().pipeline.status()}
    assert states["prepare"].state == "fresh"
    assert not states["prep"].defined  # its stored result stays in the store


def test_another_cell_producing_the_same_artifact_is_still_refused(ip):
    assert run_in(ip, "%%stage prep\nclean = [1]\n", "cell-1")[0].success
    result, cap = run_in(ip, "%%stage other\nclean = [2]\n", "cell-2")
    assert isinstance(result.error_in_exec, pipelite.DuplicateProducerError)
    assert "prep" in REGISTRY and "other" not in REGISTRY


def test_without_cell_ids_a_new_name_for_the_same_artifact_is_refused(ip):
    """A terminal shell has no cells: two inputs are two cells, so nothing is replaced."""
    assert run_in(ip, "%%stage prep\nclean = [1]\n", None)[0].success
    result, _ = run_in(ip, "%%stage prepare\nclean = [2]\n", None)
    assert isinstance(result.error_in_exec, pipelite.DuplicateProducerError)
    assert "prep" in REGISTRY


def test_a_failing_stage_cells_traceback_names_its_own_prompt_number(ip):
    ip.run_cell("x = 1", store_history=True)
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        result = ip.run_cell("%%stage boom\ny = x + 1\nraise ValueError('no')",
                             store_history=True)
    assert f"Cell In[{result.execution_count}], line 3" in cap.stdout
    # what IPython itself would name the cell, were it not a stage
    with capture_output() as cap:
        plain = ip.run_cell("raise ValueError('plain')", store_history=True)
    assert f"Cell In[{plain.execution_count}], line 1" in cap.stdout
