"""Typed records (pipelite._records): what a store keeps, read back exactly, old stores included.

``tests/data/store-format2`` was written by PipeLite before records became dataclasses (by
``Pipeline.run`` of two stages, with another user's signing key); ``old_numbers`` in it is a
format-1 record (no ``bind``, no signature), as stores made before signing hold.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest

from pipelite import Pipeline, stage
from pipelite._records import BadRecord
from pipelite.store import (
    FORMAT_VERSION,
    FailureRecord,
    OutputRecord,
    ResultRecord,
    Store,
)

OLD_STORE = Path(__file__).parent / "data" / "store-format2"


@pytest.fixture
def old_store(tmp_path):
    """A copy: the data under tests/ is never written."""
    dest = tmp_path / "old"
    shutil.copytree(OLD_STORE, dest)
    return dest


def _record_files(root: Path):
    return sorted((root / "records").glob("*/*.json"))


def test_every_record_of_an_old_store_reads_back_to_exactly_its_json(old_store):
    store = Store(str(old_store))
    files = _record_files(old_store)
    assert len(files) == 3
    for path in files:
        data = json.loads(path.read_text())
        rec = store.record(path.parent.name, path.stem)
        assert isinstance(rec, ResultRecord)
        assert rec.to_json() == data  # nothing dropped, nothing added: signatures still hold


def test_an_old_stores_results_load_without_their_stages_being_defined(old_store):
    pipe = Pipeline(store=str(old_store))
    states = {s.name: s.state for s in pipe.status()}
    assert states == {"make_numbers": "fresh", "make_table": "fresh", "old_numbers": "fresh"}
    np.testing.assert_array_equal(pipe.load("numbers"), np.arange(5) * 1.5)
    assert pipe.load("meta") == {"rows": 5, "name": "demo"}
    table = pipe.load("table")
    assert list(table.columns) == ["x", "y"] and table["y"].tolist() == [0, 3, 6, 9, 12]
    assert pipe.producers()["table"] == "make_table"


def test_a_format_1_record_is_read_and_its_output_loads(old_store):
    store = Store(str(old_store))
    rec = store.latest("old_numbers")
    assert rec is not None and rec.format_version == 1 and rec.signature is None
    assert all(o.bind is None for o in rec.outputs.values())
    np.testing.assert_array_equal(store.load_value(rec.outputs["numbers"], record=rec),
                                  np.arange(5) * 1.5)


def test_records_written_today_carry_the_current_format_version_and_are_bound(pipeline):
    @stage(outputs="x")
    def make():
        return np.arange(3)

    pipeline.run("make")
    rec = pipeline.record("make")
    assert rec.format_version == FORMAT_VERSION == 2
    assert rec.outputs["x"].bind is not None and rec.signature is not None
    assert Store(str(pipeline.store.url)).record("make", rec.fingerprint) == rec


def test_keys_a_newer_pipelite_writes_survive_a_round_trip(old_store):
    path = _record_files(old_store)[0]
    data = json.loads(path.read_text())
    data["lineage"] = {"from": "a newer version"}
    data["outputs"][next(iter(data["outputs"]))]["codec"] = "zstd"
    rec = ResultRecord.from_json(data, path.parent.name, path.stem)
    assert rec.to_json() == data


def test_records_are_frozen():
    out = OutputRecord("0" * 32, 1, "json", f"objects/00/{'0' * 32}.json")
    with pytest.raises(FrozenInstanceError):
        out.size = 2  # type: ignore[misc]
    assert replace(out, size=2).size == 2 and out.size == 1


@pytest.mark.parametrize("edit, why", [
    (lambda d: d.update(duration="long"), "duration"),
    (lambda d: d.update(started="yesterday"), "start time"),
    (lambda d: d.update(stage="other"), "not a record of stage"),
    (lambda d: d["outputs"]["numbers"].update(size=-1), "no size"),
    (lambda d: d["outputs"]["numbers"].update(path="../../etc/passwd"), "object path"),
    (lambda d: d["inputs"].update(numbers=["not", "a", "map"]), "inputs"),
    (lambda d: d["inputs"].update(numbers={"hash": "0" * 32, "stage": "../../elsewhere"}),
     "inputs"),
    (lambda d: d.update(save_duration="slow"), "save_duration"),
    (lambda d: d.update(kind=3), "kind"),
    (lambda d: d.update(origin=["a.ipynb"]), "origin"),
    (lambda d: d.update(origin={"path": "a.ipynb"}), "origin"),
])
def test_a_record_of_the_wrong_shape_is_refused_with_the_reason(old_store, edit, why):
    path = old_store / "records" / "old_numbers"
    (file,) = path.glob("*.json")
    data = json.loads(file.read_text())
    edit(data)
    with pytest.raises(BadRecord, match=why):
        ResultRecord.from_json(data, "old_numbers", file.stem)


def test_a_failure_record_round_trips_and_refuses_a_foreign_stage():
    failure = FailureRecord("f", "a" * 32, "ValueError: no", "Traceback...", "2026-01-01T00:00",
                            0.5)
    assert FailureRecord.from_json(failure.to_json(), "f") == failure
    with pytest.raises(BadRecord, match="not a failure of stage 'g'"):
        FailureRecord.from_json(failure.to_json(), "g")
