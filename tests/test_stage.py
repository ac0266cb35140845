"""Declaring stages: classes, functions, Artifact identifiers, names, the registry."""
from __future__ import annotations

import numpy as np
import pytest

from pipelite import (
    REGISTRY,
    Artifact,
    DuplicateProducerError,
    InvalidNameError,
    ParameterError,
    StageDefinitionError,
    StageOutputError,
    stage,
)


def test_the_seed_readme_example_works_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    @stage("gen_data")
    class GenerateTrainData:
        def run(self):
            data = np.random.rand(100, 10)
            return { "train_data": data }

    @stage("train_model")
    class TrainModel:
        def __init__(self, epochs: int):
            self.epochs = epochs
        def run(self, train_data: np.ndarray):
            model = do_train(data=train_data, epochs=self.epochs)  # noqa: F821
            weights = model.get_weights()
            return { "model_weights": weights }

    from pipelite import Pipeline
    Pipeline().run("gen_data")

    assert (tmp_path / ".pipelite").is_dir()
    assert Pipeline().load("train_data").shape == (100, 10)
    assert REGISTRY.get("train_model").inputs == ("train_data",)
    assert REGISTRY.get("train_model").outputs == ("model_weights",)


def test_class_stage_constructor_arguments_are_parameters_and_run_arguments_inputs():
    @stage("train")
    class Train:
        def __init__(self, epochs: int, lr: float = 0.1):
            pass
        def run(self, features, labels):
            return {"model": 1}

    st = REGISTRY.get("train")
    assert st.inputs == ("features", "labels")
    assert list(st.params) == ["epochs", "lr"]
    assert st.params["lr"] == 0.1


def test_function_stage_forms():
    @stage
    def plain(x, *, k=1):
        return {"a": x}

    @stage("named")
    def f2():
        return {"b": 1}

    @stage(outputs="c")
    def single():
        return 3

    assert REGISTRY.get("plain").inputs == ("x",) and list(REGISTRY.get("plain").params) == ["k"]
    assert "named" in REGISTRY and REGISTRY.get("named").outputs == ("b",)
    assert REGISTRY.get("single").outputs == ("c",)
    assert plain(5) == {"a": 5}  # the function stays a plain function


def test_a_non_dict_return_is_one_artifact_named_by_outputs(pipeline):
    @stage(outputs="total")
    def total():
        return [1, 2]

    assert pipeline.run("total")["total"] == [1, 2]


def test_a_non_dict_return_without_outputs_is_a_clear_error(pipeline):
    @stage
    def oops():
        return 3

    with pytest.raises(StageOutputError, match=r"returned a int, not a dict.*outputs="):
        pipeline.run("oops")


def test_declared_outputs_must_match_what_the_stage_returns(pipeline):
    @stage(outputs=["a", "b"])
    def two():
        return {"a": 1}

    with pytest.raises(StageOutputError, match=r"declares outputs \['a', 'b'\] but returned"):
        pipeline.run("two")


def test_outputs_are_known_before_the_first_run_from_a_literal_return():
    @stage
    def f(x):
        if x:
            return {"left": 1, "right": 2}
        return {"left": 0, "right": 0}

    assert REGISTRY.get("f").outputs == ("left", "right")


def test_outputs_are_learnt_from_the_first_run_otherwise(pipeline):
    @stage
    def dyn():
        out = {}
        out["late"] = 1
        return out

    assert REGISTRY.get("dyn").outputs is None
    pipeline.run("dyn")
    assert REGISTRY.get("dyn").outputs == ("late",)


class TrainData(Artifact):
    """The training matrix."""


class Weights(Artifact):
    name = "model_weights"


def test_artifact_classes_name_artifacts_in_snake_case_unless_named():
    assert TrainData.name == "train_data"
    assert Weights.name == "model_weights"
    with pytest.raises(TypeError, match="identifies the artifact 'train_data'"):
        TrainData()


def test_artifact_classes_work_wherever_a_name_does(pipeline):
    @stage
    def make():
        return {TrainData: [1, 2, 3]}

    @stage(outputs=Weights)
    def fit(x: TrainData):
        return sum(x)

    assert REGISTRY.get("make").outputs == ("train_data",)
    assert REGISTRY.get("fit").inputs == ("train_data",)
    assert pipeline.run("fit") == {"model_weights": 6}
    assert pipeline.load(TrainData) == [1, 2, 3]
    assert pipeline.load(Weights) == 6


@pytest.mark.parametrize("bad", ["1abc", "a b", "../escape", "a/b", "", "x.y"])
def test_bad_stage_names_are_a_value_error_naming_the_name(bad):
    with pytest.raises(ValueError, match="invalid stage name"):
        stage(bad)
    assert issubclass(InvalidNameError, ValueError)


@pytest.mark.parametrize("bad", ["a-b", "1x", "../x", "a b"])
def test_bad_artifact_names_are_a_value_error_naming_the_name(bad):
    with pytest.raises(ValueError, match="invalid artifact name"):
        @stage(outputs=bad)
        def f():
            return 1


def test_stage_names_may_use_dashes():
    @stage("gen-data")
    def f():
        return {"a": 1}

    assert "gen-data" in REGISTRY


def test_a_second_producer_of_an_artifact_is_an_error_naming_both_stages():
    @stage
    def first():
        return {"shared": 1}

    with pytest.raises(DuplicateProducerError, match="both stage 'first' and stage 'second'"):
        @stage
        def second():
            return {"shared": 2}


def test_a_second_producer_learnt_at_run_time_is_an_error_too(pipeline):
    @stage
    def first():
        return {"shared": 1}

    @stage
    def second():
        out = {}
        out["shared"] = 2
        return out

    with pytest.raises(DuplicateProducerError, match="'first'.*'second'"):
        pipeline.run("second")


def test_re_registering_a_stage_under_the_same_name_replaces_it(pipeline):
    @stage(outputs="v")
    def f():
        return 1

    @stage(outputs="v")  # a notebook re-running its cell
    def f():  # noqa: F811
        return 2

    assert len(REGISTRY) == 1
    assert pipeline.run("f")["v"] == 2


def test_a_missing_required_parameter_names_stage_parameter_and_fix(pipeline):
    @stage("train_model")
    class TrainModel:
        def __init__(self, epochs: int):
            self.epochs = epochs
        def run(self):
            return {"w": self.epochs}

    with pytest.raises(ParameterError) as err:
        pipeline.run("train_model")
    assert str(err.value) == (
        "stage 'train_model' needs parameter 'epochs': pass "
        "Pipeline(params={'train_model': {'epochs': ...}}) "
        "or run(..., params={'train_model': {'epochs': ...}})")


def test_an_unknown_parameter_is_an_error_listing_the_real_ones(pipeline):
    @stage(outputs="y")
    def f(*, scale=1):
        return scale

    with pytest.raises(ParameterError, match=r"no parameter 'scael' \(it takes: scale\)"):
        pipeline.run("f", params={"f": {"scael": 2}})


def test_star_args_cannot_be_inputs():
    with pytest.raises(StageDefinitionError, match=r"\*args"):
        @stage
        def f(*args):
            return {}


def test_a_class_without_run_is_a_clear_error():
    with pytest.raises(StageDefinitionError, match="has no run"):
        @stage("x")
        class X:
            pass
