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


def test_pandas_frames_are_arrow_ipc(pipeline):
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}, index=[10, 20, 30])
    back, fmt = roundtrip(pipeline, df)
    assert fmt == "arrow-pandas"
    pd.testing.assert_frame_equal(back, df)
    path = pipeline.store.object_path(pipeline.record("make").outputs["v"])
    assert path.endswith(".arrow")
    import pyarrow.feather

    pd.testing.assert_frame_equal(pyarrow.feather.read_table(path).to_pandas(), df)


def test_a_frame_arrow_cannot_hold_falls_back_to_pickle(pipeline):
    df = pd.DataFrame({0: [1, 2], 1: [[1], {"a": 2}]})  # non-string column names, odd cells
    back, fmt = roundtrip(pipeline, df)
    assert fmt == "pickle"
    pd.testing.assert_frame_equal(back, df)


def _frames():
    import datetime
    import decimal

    idx = pd.MultiIndex.from_tuples([(1, "a"), (1, "b"), (2, "a")], names=["i", "j"])
    named = pd.DataFrame({"k": [1.0, 2.0, 3.0], "s": list("abc")},
                         index=pd.Index([5, 6, 7], name="k"))
    attrs = pd.DataFrame({"a": [1.0, float("nan"), -0.0]})
    attrs.attrs["unit"] = "m"
    return {  # frames Arrow gives back exactly
        "range-index": pd.DataFrame({"a": [1.0, float("nan"), 3.0], "s": list("abc")}),
        "shifted-range": pd.DataFrame({"a": [1.0, 2, 3]}, index=pd.RangeIndex(5, 11, 2,
                                                                              name="r")),
        "multi-index": pd.DataFrame({"a": [1.0, 2, 3], "b": [1, 2, 3]}, index=idx),
        "index-named-as-a-column": named,
        "categorical": pd.DataFrame({"c": pd.Categorical(list("aba"), categories=list("cba"),
                                                         ordered=True), "f": [1.0, 2, 3]}),
        "tz-datetimes": pd.DataFrame({"t": pd.date_range("2020", periods=3,
                                                         tz="Europe/Paris")}),
        "nanoseconds": pd.DataFrame({"t": pd.to_datetime(["2020-01-01 00:00:00.000000001"] * 3),
                                     "d": pd.to_timedelta([1, 2, 3], unit="ns")}),
        "nullable": pd.DataFrame({"i": pd.array([1, None, 3], dtype="Int64"),
                                  "b": pd.array([True, None, False], dtype="boolean"),
                                  "s": pd.array(["a", None, "c"], dtype="string")}),
        "int-column-names": pd.DataFrame({0: [1.0, 2, 3], 1: [4, 5, 6], 2: list("xyz")}),
        "multi-column-names": pd.DataFrame({("a", "x"): [1.0, 2, 3], ("b", "y"): list("abc")}),
        "numpy-types": pd.DataFrame({"f32": np.ones(3, np.float32), "u8": np.arange(3, dtype=
                                     np.uint8), "b": [True, False, True]}),
        "objects-arrow-types": pd.DataFrame({
            "bytes": pd.Series([b"a", b"b", b"c"], dtype=object),
            "decimal": pd.Series([decimal.Decimal("1.5")] * 3, dtype=object),
            "date": pd.Series([datetime.date(2020, 1, 1)] * 3, dtype=object)}),
        "period-interval": pd.DataFrame({"p": pd.period_range("2020", periods=3, freq="M"),
                                         "i": pd.interval_range(0, 3)}),
        "attrs": attrs,
        "empty": pd.DataFrame(),
        "no-rows": pd.DataFrame({"a": pd.Series([], dtype=float), "s": pd.Series([],
                                                                                dtype=str)}),
    }


def _pickled_frames():
    return {  # frames Arrow would change: pickled instead
        "object-strings": pd.DataFrame({"s": pd.Series(list("abc"), dtype=object)}),
        "object-strings-and-none": pd.DataFrame({"s": pd.Series(["a", None], dtype=object)}),
        "python-strings": pd.DataFrame({"s": pd.array(list("ab"), dtype=pd.StringDtype(
            "python"))}),
        "lists": pd.DataFrame({"l": pd.Series([[1], [2]], dtype=object)}),
        "index-freq": pd.DataFrame({"a": [1, 2]}, index=pd.date_range("2020", periods=2,
                                                                      freq="D")),
        "duplicate-names": pd.DataFrame([[1.0, 2.0]], columns=["a", "a"]),
        "mixed-objects": pd.DataFrame({"m": pd.Series([1, "a"], dtype=object)}),
        "complex": pd.DataFrame({"c": np.array([1j, 2j])}),
        "object-strings-after-the-first-rows": pd.DataFrame(
            {"s": pd.Series(["a"] * 40 + [1], dtype=object)}),
    }


def _assert_exact(back, df):
    pd.testing.assert_frame_equal(back, df, check_exact=True, check_freq=True,
                                  check_flags=True)
    assert back.attrs == df.attrs


@pytest.mark.parametrize("name", list(_frames()))
def test_pandas_frames_round_trip_exactly_through_arrow(pipeline, name):
    df = _frames()[name]
    back, fmt = roundtrip(pipeline, df)
    assert fmt == "arrow-pandas"
    _assert_exact(back, df)
    _assert_exact(Pipeline(store=pipeline.store.url).load("v"), df)


@pytest.mark.parametrize("name", list(_pickled_frames()))
def test_frames_arrow_would_change_are_pickled(pipeline, name):
    df = _pickled_frames()[name]
    back, fmt = roundtrip(pipeline, df)
    assert fmt == "pickle"
    _assert_exact(back, df)


def test_numeric_columns_of_a_loaded_frame_map_the_file(pipeline):
    df = pd.DataFrame({"a": np.arange(1000.0), "s": [str(i) for i in range(1000)]})
    roundtrip(pipeline, df)
    back = Pipeline(store=pipeline.store.url).load("v")
    a = back["a"].to_numpy()
    assert not a.flags.owndata and not a.flags.writeable  # a view of the mapped file
    with pytest.raises(ValueError, match="read-only"):  # like arrays: the file is not changed
        back.loc[0, "a"] = -1.0
    mine = back.copy()
    mine.loc[0, "a"] = -1.0
    back["a"] = back["a"] + 1  # a new column: fine
    assert mine.loc[0, "a"] == -1.0 and pipeline.load("v").loc[0, "a"] == 0.0


def test_frames_stored_as_parquet_before_still_load(pipeline, monkeypatch):
    from pipelite import store as store_module
    from pipelite.formats import format_named

    df = pd.DataFrame({"a": [1.5, 2.5], "s": ["x", "y"]}, index=pd.Index([3, 4], name="k"))
    plf = pl.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    monkeypatch.setattr(store_module, "format_for", lambda v: format_named(
        "parquet-pandas" if isinstance(v, pd.DataFrame) else "parquet-polars"))

    @stage(outputs=["old_pd", "old_pl"])
    def make():
        return {"old_pd": df, "old_pl": plf}

    pipeline.run("make")
    monkeypatch.undo()
    rec = pipeline.record("make")
    assert {o.format for o in rec.outputs.values()} == {"parquet-pandas", "parquet-polars"}
    fresh = Pipeline(store=pipeline.store.url)
    pd.testing.assert_frame_equal(fresh.load("old_pd"), df)
    assert fresh.load("old_pl").equals(plf)


def test_polars_frames_are_arrow_ipc(pipeline):
    df = pl.DataFrame({"a": [1, 2], "b": ["x", "y"], "c": [1.5, None]},
                      schema_overrides={"b": pl.Categorical})
    back, fmt = roundtrip(pipeline, df)
    assert fmt == "arrow-polars" and back.equals(df) and back.schema == df.schema


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
    pd.DataFrame({"a": [1.5, 2.5], "s": ["x", "y"]}, index=pd.Index([3, 4], name="k")),
    pl.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
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
