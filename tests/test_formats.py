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
