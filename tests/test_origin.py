"""A stage's origin (issue 10, item 4): the notebook that defined it, kept in its records.

The notebook UI groups stages by notebook and warns when two notebooks use one stage name; the
core records where each result came from (``Stage.origin`` -> ``ResultRecord.origin``,
``FailureRecord.origin``), shows it (``StageStatus.origin``, ``explain``) and answers
``Pipeline.origin_of(name)``. The origin is not part of the fingerprint.
"""
from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelite import (
    REGISTRY,
    CellStage,
    InvalidNameError,
    Pipeline,
    StageDefinitionError,
    Store,
    stage,
)
from pipelite._records import BadRecord
from pipelite._trust import is_signed
from pipelite.fingerprint import fingerprint_of
from pipelite.stage import stage_of
from pipelite.store import FailureRecord, ResultRecord

OLD_STORE = Path(__file__).parent / "data" / "store-format2"


def _numbers(origin=None):
    @stage(outputs="n")
    def numbers():
        return 3

    st = stage_of(numbers)
    st.origin = origin
    return st


def _record_json(store_dir: Path, name: str) -> dict:
    (file,) = (store_dir / "records" / name).glob("*.json")
    return json.loads(file.read_text())


# -- the stage attribute ------------------------------------------------------------------
def test_a_stage_has_no_origin_unless_given(pipeline):
    st = _numbers()
    assert st.origin is None
    st.origin = "analysis/prep.ipynb"
    assert st.origin == "analysis/prep.ipynb"
    cell = CellStage("c", "x = 1\n", {}, origin="a.ipynb")
    assert cell.origin == "a.ipynb"
    assert CellStage("d", "y = 1\n", {}).origin is None


@pytest.mark.parametrize("bad", [["a.ipynb"], {"path": "a.ipynb"}, 3, Path("a.ipynb")])
def test_an_origin_that_is_not_text_is_refused_when_set(bad):
    st = _numbers()
    with pytest.raises(StageDefinitionError, match="origin"):
        st.origin = bad
    with pytest.raises(StageDefinitionError, match="origin"):
        CellStage("c", "x = 1\n", {}, origin=bad)


def test_a_redefined_cell_inherits_and_keeps_its_own_origin():
    ns: dict = {}
    first = CellStage("c", "x = 1\n", ns, origin="a.ipynb")
    second = CellStage("c", "x = 2\n", ns, origin="b.ipynb")
    second.inherit(first)
    assert second.origin == "b.ipynb" and first.origin == "a.ipynb"
    third = CellStage("c", "x = 3\n", ns)
    third.inherit(second)
    third.inherit(None)
    assert third.origin is None


# -- not in the fingerprint ---------------------------------------------------------------
def test_the_origin_is_not_part_of_the_fingerprint():
    st = _numbers()
    before = fingerprint_of(st, {}, {})
    st.origin = "somewhere/else.ipynb"
    after = fingerprint_of(st, {}, {})
    assert after.digest == before.digest and after.parts == before.parts
    ns: dict = {"k": 2}
    cell = CellStage("c", "x = k * 2\n", ns, origin="a.ipynb")
    digest = fingerprint_of(cell, {}, {}).digest
    cell.origin = "renamed.ipynb"
    assert fingerprint_of(cell, {}, {}).digest == digest


def test_renaming_the_notebook_leaves_the_stage_fresh(pipeline):
    st = _numbers("a.ipynb")
    assert pipeline.run("numbers").executed == ["numbers"]
    st.origin = "renamed.ipynb"
    assert pipeline.status()[0].state == "fresh"
    assert pipeline.run("numbers").executed == []


# -- records -------------------------------------------------------------------------------
def test_the_origin_is_written_into_the_record_and_read_back(pipeline, store_dir):
    _numbers("analysis/prep.ipynb")
    pipeline.run("numbers")
    data = _record_json(store_dir, "numbers")
    assert data["origin"] == "analysis/prep.ipynb"
    assert is_signed(data)  # the origin is signed with the rest
    rec = Store(str(store_dir)).latest("numbers")
    assert rec is not None and rec.origin == "analysis/prep.ipynb"
    assert rec.to_json() == data and rec.extra == {}  # a known key, not a newer version's
    assert ResultRecord.from_json(data, "numbers", rec.fingerprint) == rec


def test_without_an_origin_the_record_has_no_origin_key(pipeline, store_dir):
    _numbers()
    pipeline.run("numbers")
    assert "origin" not in _record_json(store_dir, "numbers")
    assert pipeline.record("numbers").origin is None


def test_records_written_before_origins_still_load(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(OLD_STORE, old)
    pipe = Pipeline(store=str(old))
    for path in sorted((old / "records").glob("*/*.json")):
        data = json.loads(path.read_text())
        assert "origin" not in data
        rec = pipe.store.record(path.parent.name, path.stem)
        assert rec is not None and rec.origin is None and rec.to_json() == data
    assert {s.name: s.origin for s in pipe.status()} == {
        "make_numbers": None, "make_table": None, "old_numbers": None}
    assert pipe.origin_of("make_numbers") is None


@pytest.mark.parametrize("bad", [["a.ipynb"], {"path": "a.ipynb"}, 3, True])
def test_a_record_with_an_origin_that_is_not_text_is_refused(pipeline, store_dir, bad):
    _numbers("a.ipynb")
    pipeline.run("numbers")
    (file,) = (store_dir / "records" / "numbers").glob("*.json")
    data = json.loads(file.read_text())
    data["origin"] = bad
    with pytest.raises(BadRecord, match="its origin is not text"):
        ResultRecord.from_json(data, "numbers", file.stem)
    # in a store: reported as corrupt, ignored (the stage recomputes), never used as origin
    file.write_text(json.dumps(data))
    fresh = Pipeline(store=str(store_dir))
    with pytest.warns(UserWarning, match="its origin is not text"):
        assert fresh.status()[0].state == "missing"
    assert fresh.origin_of("numbers") is None


def test_a_failure_records_its_origin(pipeline, store_dir):
    @stage(outputs="n")
    def broken():
        raise ValueError("no")

    stage_of(broken).origin = "b.ipynb"
    with pytest.raises(ValueError):
        pipeline.run("broken")
    data = json.loads((store_dir / "records" / "broken" / "FAILED.json").read_text())
    assert data["origin"] == "b.ipynb"
    failure = pipeline.store.failure("broken")
    assert failure is not None and failure.origin == "b.ipynb"
    assert FailureRecord.from_json(failure.to_json(), "broken") == failure


def test_a_failure_record_without_origin_loads_and_a_bad_origin_is_refused():
    failure = FailureRecord("f", "a" * 32, "ValueError: no", "", "2026-01-01T00:00", 0.5)
    data = failure.to_json()
    assert "origin" not in data and FailureRecord.from_json(data, "f").origin is None
    for bad in (["a.ipynb"], {"p": 1}, 7):
        with pytest.raises(BadRecord, match="its origin is not text"):
            FailureRecord.from_json({**data, "origin": bad}, "f")


def test_an_executor_writes_the_origin_too(store_dir):
    _numbers("on/executor.ipynb")
    with ThreadPoolExecutor(2) as pool:
        Pipeline(store=str(store_dir), executor=pool).run("numbers")
    assert _record_json(store_dir, "numbers")["origin"] == "on/executor.ipynb"


def test_a_result_stored_for_the_state_after_its_run_keeps_the_origin(pipeline, store_dir):
    seen: list = []

    @stage(outputs="n")
    def grows():
        seen.append(1)  # changes a global it reads: stored again for the state after
        return len(seen)

    stage_of(grows).origin = "g.ipynb"
    with pytest.warns(UserWarning, match="changed what it reads"):
        pipeline.run("grows")
    records = pipeline.store.records_of("grows")
    assert len(records) == 2 and {r.origin for r in records} == {"g.ipynb"}


# -- status, explain, origin_of ----------------------------------------------------------
def test_status_gives_the_defined_stages_origin(pipeline):
    st = _numbers("a.ipynb")
    pipeline.run("numbers")
    st.origin = "b.ipynb"  # now defined in another notebook: the definition wins
    (status,) = pipeline.status()
    assert status.defined and status.origin == "b.ipynb"
    st.origin = None
    assert pipeline.status()[0].origin is None


def test_status_of_a_stage_known_only_from_the_store_gives_its_records_origin(store_dir):
    _numbers("analysis/prep.ipynb")
    Pipeline(store=str(store_dir)).run("numbers")
    REGISTRY.clear()  # a kernel restart: the stage is known from the store only
    (status,) = Pipeline(store=str(store_dir)).status()
    assert not status.defined and status.origin == "analysis/prep.ipynb"


def test_explain_says_where_the_stage_is_defined(pipeline):
    st = _numbers("analysis/prep.ipynb")
    pipeline.run("numbers")
    assert "defined in: analysis/prep.ipynb" in pipeline.explain("numbers")
    st.origin = None
    assert "defined in" not in pipeline.explain("numbers")
    REGISTRY.clear()
    assert "defined in: analysis/prep.ipynb" in pipeline.explain("numbers")


def test_origin_of_reads_the_newest_stored_run(pipeline):
    assert pipeline.origin_of("numbers") is None  # never run, never defined
    st = _numbers("a.ipynb")
    assert pipeline.origin_of("numbers") is None  # defined, but nothing stored
    pipeline.run("numbers")
    assert pipeline.origin_of("numbers") == "a.ipynb"
    assert pipeline.origin_of(st) == "a.ipynb"
    st.origin = "b.ipynb"  # defined elsewhere now: the store still says a.ipynb
    assert pipeline.origin_of("numbers") == "a.ipynb"
    REGISTRY.clear()  # the extension asks before it registers the stage
    assert Pipeline(store=pipeline.store).origin_of("numbers") == "a.ipynb"


def test_origin_of_a_stage_whose_last_run_failed_is_the_failures(pipeline):
    @stage(outputs="n")
    def flaky(*, fail=False):
        if fail:
            raise ValueError("no")
        return 1

    stage_of(flaky).origin = "a.ipynb"
    pipeline.run("flaky")
    stage_of(flaky).origin = "b.ipynb"
    with pytest.raises(ValueError):
        pipeline.run("flaky", params={"flaky": {"fail": True}})
    assert pipeline.origin_of(flaky) == "b.ipynb"


def test_origin_of_refuses_a_name_that_is_no_stage_name(pipeline):
    for bad in ("../etc", "", 42):
        with pytest.raises(InvalidNameError):
            pipeline.origin_of(bad)


# -- how a notebook's path is written ------------------------------------------------------
def test_origin_for_is_relative_to_the_stores_folder_when_under_it(tmp_path):
    store = Store(str(tmp_path / "project" / ".pipelite"))
    inside = tmp_path / "project" / "analysis" / "prep.ipynb"
    assert store.origin_for(inside) == "analysis/prep.ipynb"
    assert store.origin_for(str(inside)) == "analysis/prep.ipynb"
    outside = tmp_path / "elsewhere" / "x.ipynb"
    assert store.origin_for(outside) == os.path.abspath(outside)
    assert store.origin_for(tmp_path / "project2" / "y.ipynb") == str(
        tmp_path / "project2" / "y.ipynb")  # a sibling folder sharing a prefix is outside


def test_origin_for_a_relative_path_and_a_store_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Store(".pipelite").origin_for("train.ipynb") == "train.ipynb"
    assert Store(".pipelite").origin_for(str(tmp_path / "sub" / "t.ipynb")) == "sub/t.ipynb"


def test_origin_for_a_store_that_is_not_a_local_folder_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store("memory://origin-test")
    assert store.origin_for("train.ipynb") == str(tmp_path / "train.ipynb")


def test_origin_for_refuses_what_is_not_a_path(store_dir):
    from pipelite import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="path"):
        Store(str(store_dir)).origin_for(None)  # type: ignore[arg-type]
