"""``%%stage --file/--out-file/--no-cache/--expires/--ignore`` and ``%pipelite accept``,
through a real InteractiveShell."""
from __future__ import annotations

import datetime as dt
import os

import pytest
from IPython.core.error import UsageError

from pipelite import _freshness
from tests.test_ipy_magics import LOADED, ok, ran, run

_NOW = dt.datetime.now


def test_a_cell_input_file_names_the_file_that_changed(ip, tmp_path):
    (tmp_path / "raw.csv").write_text("1,2")
    cell = """\
    %%stage load --file raw.csv
    open(LOG, "a").write("load\\n")
    rows = open("raw.csv").read().split(",")
    """
    ok(ip, cell)
    assert LOADED.search(ok(ip, cell).stdout)
    (tmp_path / "raw.csv").write_text("1,2,3")
    ok(ip, "%pipelite status")
    assert ip.run_line_magic("pipelite", "explain load") is None
    out = ok(ip, "%pipelite explain load").stdout
    assert "file 'raw.csv' changed" in out
    ok(ip, cell)
    assert ran(tmp_path) == ["load", "load"] and ip.user_ns["rows"] == ["1", "2", "3"]


def test_a_cell_output_file_is_restored_on_a_hit(ip, tmp_path):
    cell = """\
    %%stage report --out-file out/report.txt
    import os
    open(LOG, "a").write("report\\n")
    os.makedirs("out", exist_ok=True)
    open("out/report.txt", "w").write("hello")
    """
    ok(ip, cell)
    os.remove("out/report.txt")
    out = ok(ip, cell)
    assert LOADED.search(out.stdout) and ran(tmp_path) == ["report"]
    assert open("out/report.txt").read() == "hello"
    assert os.fspath(ip.user_ns["report"]) == str(tmp_path / "out" / "report.txt")
    downstream = """\
    %%stage length
    n = len(open(report).read())
    """
    ok(ip, downstream)
    assert ip.user_ns["n"] == 5


def test_a_no_cache_cell_runs_every_time_and_its_reader_is_a_hit(ip, tmp_path):
    fetch = """\
    %%stage fetch --no-cache
    open(LOG, "a").write("fetch\\n")
    value = 41
    """
    use = """\
    %%stage use
    open(LOG, "a").write("use\\n")
    answer = value + 1
    """
    assert "nothing stored (--no-cache)" in ok(ip, fetch).stdout
    ok(ip, use)
    out = ok(ip, use)
    # each run that needs it runs it again; the reader is keyed by its content
    assert ran(tmp_path) == ["fetch", "fetch", "use", "fetch"] and ip.user_ns["answer"] == 42
    assert LOADED.search(out.stdout)
    assert not (tmp_path / ".pipelite" / "records" / "fetch").exists()


def test_an_expiring_cell_reruns_after_its_age(ip, tmp_path, monkeypatch):
    cell = """\
    %%stage pull --expires 1d
    open(LOG, "a").write("pull\\n")
    prices = [1, 2]
    """
    ok(ip, cell)
    ok(ip, cell)
    when = _NOW(dt.timezone.utc) + dt.timedelta(hours=26)

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return when

    monkeypatch.setattr(_freshness._dt, "datetime", Later)
    assert "result expired (stored 26 h ago)" in ok(ip, "%pipelite explain pull").stdout
    ok(ip, cell)
    assert ran(tmp_path) == ["pull", "pull"]


def test_an_ignored_global_leaves_the_cell_fresh(ip, tmp_path):
    ok(ip, "VERBOSE = 0\nFACTOR = 2")
    cell = """\
    %%stage scaled --ignore VERBOSE
    open(LOG, "a").write("scaled\\n")
    if VERBOSE:
        print("scaling")
    y = 3 * FACTOR
    """
    ok(ip, cell)
    ok(ip, "VERBOSE = 1")
    ok(ip, cell)
    ok(ip, "FACTOR = 3")
    ok(ip, cell)
    assert ran(tmp_path) == ["scaled", "scaled"]


@pytest.mark.parametrize("flags, message", [
    ("--expires soon", "is not a duration"),
    ("--out-file 1x=out/a.txt", "NAME a Python identifier"),
    ("--no-cache --expires 1d", "not both"),
    ("--ignore 'a-b'", "give the names of globals"),
])
def test_bad_flags_are_usage_messages(ip, flags, message):
    result, cap = run(ip, f"%%stage bad {flags}\nz = 1\n")
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)


def test_accept_magic_adopts_a_refactored_cell(ip, tmp_path):
    ok(ip, "%%stage base\nopen(LOG, 'a').write('base\\n')\nb = [1, 2]\n")
    ok(ip, "%%stage total\nopen(LOG, 'a').write('total\\n')\nt = sum(b)\n")
    refactored = "%%stage total\nopen(LOG, 'a').write('total\\n')\nt = sum(v for v in b)\n"
    ok(ip, "%%stage total --define\n" + refactored.split("\n", 1)[1])
    out = ok(ip, "%pipelite accept total").stdout
    assert "accepted the stored result" in out and "its code changed" in out
    assert "accepted:" in ok(ip, "%pipelite explain total").stdout
    assert LOADED.search(ok(ip, refactored).stdout)
    assert ran(tmp_path) == ["base", "total"]
    ok(ip, "b = None")
    ok(ip, "%%stage base\nopen(LOG, 'a').write('base\\n')\nb = [1, 2, 3]\n")
    result, _ = run(ip, "%pipelite accept total")
    assert "input 'b' changed" in str(result.error_in_exec)


def test_an_out_file_named_by_a_digit_or_underscore_is_an_artifact_name(ip, tmp_path):
    cell = """\
    %%stage numbered --out-file 1.txt --out-file _draft.txt --out-file summary=s.txt
    open("1.txt", "w").write("one")
    open("_draft.txt", "w").write("draft")
    open("s.txt", "w").write("sum")
    """
    out = ok(ip, cell).stdout
    assert "file_1 (file 1.txt" in out and "draft (file _draft.txt" in out
    assert "summary (file s.txt" in out
    assert open(ip.user_ns["file_1"]).read() == "one"


def test_the_first_stage_cell_makes_a_store_git_ignores(ip, tmp_path):
    ok(ip, "%%stage first\nx = 1\n")
    assert "*" in (tmp_path / ".pipelite" / ".gitignore").read_text().splitlines()
