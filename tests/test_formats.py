"""Each value type lands in its native format and comes back equal."""
from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest

from pipelite import Pipeline, register_format, stage
from pipelite.formats import _USER


def roundtrip(pipeline: Pipeline, value):
    @stage(outputs="v")
    def make():
        return value

    pipeline.run("make")
    fmt = pipeline.record("make").outputs["v"].format
    return pipeline.load("v"), fmt


def test_numpy_arrays_are_npy_and_load_memory_mapped_read_only(pipeline):
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]  # not contiguous
    back, fmt = roundtrip(pipeline, arr)
    assert fmt == "npy"
    np.testing.assert_array_equal(back, arr)
    assert not back.flags.writeable


def test_the_npy_file_is_exactly_what_np_save_writes(pipeline, tmp_path):
    arr = np.random.default_rng(0).random((50, 3))
    roundtrip(pipeline, arr)
    ours = open(pipeline.store.object_path(pipeline.record("make").outputs["v"]), "rb").read()
    np.save(tmp_path / "ref.npy", arr)
    assert ours == (tmp_path / "ref.npy").read_bytes()


def test_empty_and_structured_arrays_round_trip(pipeline):
    back, _ = roundtrip(pipeline, np.zeros((0, 3)))
    assert back.shape == (0, 3)


def test_pandas_frames_are_parquet(pipeline):
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}, index=[10, 20, 30])
    back, fmt = roundtrip(pipeline, df)
    assert fmt == "parquet-pandas"
    pd.testing.assert_frame_equal(back, df)


def test_a_frame_parquet_cannot_hold_falls_back_to_pickle(pipeline):
    df = pd.DataFrame({0: [1, 2], 1: [[1], {"a": 2}]})  # non-string column names, odd cells
    back, fmt = roundtrip(pipeline, df)
    assert fmt == "pickle"
    pd.testing.assert_frame_equal(back, df)


def test_polars_frames_are_parquet(pipeline):
    df = pl.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    back, fmt = roundtrip(pipeline, df)
    assert fmt == "parquet-polars" and back.equals(df)


@pytest.mark.parametrize("value", [{"a": [1, 2.5, None, True, "s"]}, [1, 2], "text", 3, None])
def test_json_exact_values_are_json(pipeline, value):
    back, fmt = roundtrip(pipeline, value)
    assert fmt == "json" and back == value and type(back) is type(value)


@pytest.mark.parametrize("value", [(1, 2), {1: "int key"}, {"s": {1, 2}}, float("nan"), b"x"])
def test_values_json_would_change_are_pickled(pipeline, value):
    back, fmt = roundtrip(pipeline, value)
    assert fmt == "pickle"
    assert type(back) is type(value)
    if value == value:  # nan
        assert back == value


def test_functions_and_lambdas_are_cloudpickled(pipeline):
    back, fmt = roundtrip(pipeline, lambda x: x * 3)
    assert fmt == "pickle" and back(2) == 6


class Model:
    def __init__(self, w):
        self.w = w


def test_register_format_stores_a_user_type_its_own_way(pipeline):
    def save(m, path):
        with open(path, "w") as f:
            f.write(str(m.w))

    def load(path):
        with open(path) as f:
            return Model(int(f.read()))

    register_format(Model, save, load, ext="mdl")
    try:
        back, fmt = roundtrip(pipeline, Model(7))
        assert fmt.endswith("Model") and back.w == 7
        path = pipeline.store.object_path(pipeline.record("make").outputs["v"])
        assert path.endswith(".mdl") and open(path).read() == "7"
    finally:
        _USER.clear()


def test_an_unstorable_output_is_a_clear_error_and_stores_nothing(pipeline):
    import threading

    from pipelite import StageOutputError

    @stage(outputs="v")
    def make():
        return threading.Lock()

    with pytest.raises(StageOutputError, match="output 'v' .*cannot be stored.*register_format"):
        pipeline.run("make")
    assert pipeline.store.records_of("make") == []
    assert [s.state for s in pipeline.status()] == ["failed"]


# -- a miss returns what it computed, where the file would give back the same ----------------
class Point:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return type(other) is Point and other.x == self.x


MISS_VALUES = [
    {"a": [1, 2.5, None, True, "s"]},  # json
    (1, 2),  # pickle
    Point(3),  # pickle
]


def _same(a, b):
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, pl.DataFrame):
        assert a.equals(b) and a.schema == b.schema
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("value", MISS_VALUES, ids=lambda v: type(v).__name__)
def test_a_miss_returns_what_a_later_hit_loads_without_reading_its_files(
        pipeline, monkeypatch, value):
    from pipelite.store import Store

    loads = []
    real = Store.load_value
    monkeypatch.setattr(Store, "load_value",
                        lambda self, *a, **k: loads.append(a) or real(self, *a, **k))

    @stage(outputs="v")
    def make():
        return value

    miss = pipeline.run("make")
    assert miss.executed == ["make"]
    assert loads == []  # saved, not read back
    assert miss["v"] is value
    hit = Pipeline(store=pipeline.store.url).run("make")
    assert hit.executed == [] and len(loads) == 1
    _same(miss["v"], hit["v"])


def test_arrays_still_come_back_read_only_memory_mapped_on_a_miss(pipeline):
    arr = np.arange(6.0)

    @stage(outputs="v")
    def make():
        return arr

    back = pipeline.run("make")["v"]
    assert back is not arr and not back.flags.writeable
    np.testing.assert_array_equal(back, arr)


def test_a_user_format_is_read_back_after_a_miss(pipeline):
    def save(m, path):
        with open(path, "w") as f:
            f.write(str(m.w))

    register_format(Model, save, lambda path: Model(int(open(path).read()) + 1), ext="mdl")
    try:
        @stage(outputs="v")
        def make():
            return Model(1)

        assert pipeline.run("make")["v"].w == 2  # what a hit would give, not the computed one
    finally:
        _USER.clear()


def test_a_miss_with_a_mutated_result_leaves_the_stored_one_intact(pipeline):
    @stage(outputs="v")
    def make():
        return {"k": [1, 2]}

    pipeline.run("make")["v"]["k"].append(3)
    assert pipeline.load("v") == {"k": [1, 2]}
