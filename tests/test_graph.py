"""The graph in mermaid, DOT and SVG, coloured by state (pipelite/graph.py)."""
from __future__ import annotations

import re

import pytest

from pipelite import GraphvizNotFoundError, PipeliteError, stage


def test_mermaid_colours_nodes_by_state(pipeline, two_stages):
    pipeline.run("a")
    text = pipeline.graph()
    assert text.startswith("flowchart LR")
    assert 's0["a"]:::fresh' in text and 's1["b"]:::missing' in text
    assert 's0 -->|"x"| s1' in text  # stages only: the artifact labels the edge
    assert "a_x" not in text and '(["x"])' not in text
    for state in ("fresh", "stale", "missing", "failed", "running"):
        assert f"classDef {state} " in text
        assert f'legend_{state}["{state}"]:::{state}' in text  # the legend of colours


def test_artifacts_true_draws_every_artifact_as_a_node(pipeline, two_stages):
    text = pipeline.graph(artifacts=True)
    assert 's0["a"]:::missing' in text and 'a0(["x"]):::artifact' in text
    assert "s0 --> a0" in text and "a0 --> s1" in text and "a1 --> " not in text
    assert pipeline.graph("dot", artifacts=True).count("shape=ellipse") == 2  # x and y


def test_dot_output_is_a_digraph_with_states(pipeline, two_stages):
    text = pipeline.graph("dot")
    assert text.startswith("digraph pipelite {") and '"s0" -> "s1" [label="x"];' in text
    assert "(missing)" in text and "cluster_legend" in text


def _chain(outputs_per_link: list[list[str]]):
    """Stages l0 -> l1 -> ..., each link reading every output of the one before."""
    for i, outs in enumerate(outputs_per_link):
        before = outputs_per_link[i - 1] if i else []
        args = ", ".join(before)
        body = "{" + ", ".join(f"'{o}': {i}" for o in outs) + "}"
        fn = eval(f"lambda {args}: {body}")  # noqa: S307 - test stages
        fn.__name__ = fn.__qualname__ = f"l{i}"
        stage(outputs=outs)(fn)


def test_more_than_two_artifacts_on_one_edge_collapse_to_a_count(pipeline):
    _chain([["p", "q", "r"], ["s", "t"], ["u"]])
    text = pipeline.graph()
    assert 's0 -->|"3 artifacts"| s1' in text and 's1 -->|"s, t"| s2' in text


def test_an_input_no_stage_produces_is_drawn_apart(pipeline):
    @stage(outputs="y")
    def needs(nowhere):
        return nowhere

    text = pipeline.graph()
    assert 'm0(["nowhere (no producer)"]):::orphan' in text and "m0 --> s0" in text


def test_stage_names_that_differ_by_dash_and_underscore_get_their_own_nodes(pipeline):
    @stage(name="clean-data", outputs="c1")
    def one():
        return 1

    @stage(name="clean_data", outputs="c2")
    def two():
        return 2

    text = pipeline.graph()
    assert 's0["clean-data"]' in text and 's1["clean_data"]' in text


def test_a_ten_stage_graph_has_ten_nodes_and_no_artifact_nodes(pipeline):
    """The readability issue 10 reported: 10 stages with many artifacts drew 46 nodes."""
    _chain([[f"a{i}_{k}" for k in range(3)] for i in range(10)])
    text = pipeline.graph()
    nodes = [line for line in text.splitlines() if re.match(r'    s\d+\["', line)]
    assert len(nodes) == 10 and "([" not in text
    assert text.count("3 artifacts") == 9


def test_a_deep_pipeline_is_drawn_top_to_bottom_and_a_short_one_left_to_right(pipeline):
    """Ten stages in a row, left to right, are too wide for a notebook's output: its text
    would shrink to 5 px. Up to five stages deep, left to right; deeper, top to bottom."""
    _chain([[f"d{i}"] for i in range(5)])
    assert pipeline.graph().startswith("flowchart LR")
    assert "rankdir=LR;" in pipeline.graph("dot")
    _chain([[f"d{i}"] for i in range(6)])  # l5 reads l4: six deep
    assert pipeline.graph().startswith("flowchart TB")
    dot = pipeline.graph("dot")
    assert "rankdir=TB;" in dot
    assert '{ rank=same; "legend_fresh"; "legend_stale"' in dot  # the legend stays a row


def test_many_stages_side_by_side_stay_left_to_right(pipeline):
    for i in range(8):  # eight independent stages: one rank deep
        fn = eval(f"lambda: {{'w{i}': {i}}}")  # noqa: S307 - test stages
        fn.__name__ = fn.__qualname__ = f"w{i}"
        stage(outputs=[f"w{i}"])(fn)
    assert pipeline.graph().startswith("flowchart LR")


def test_svg_output_uses_graphviz(pipeline, two_stages):
    svg = pipeline.graph("svg")
    assert "<svg" in svg and ">a</text>" in svg


def test_svg_without_graphviz_says_how_to_get_it(pipeline, two_stages, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on the PATH
    with pytest.raises(GraphvizNotFoundError, match="install Graphviz"):
        pipeline.graph("svg")


def test_an_unknown_graph_format_is_a_clear_error(pipeline, two_stages):
    with pytest.raises(PipeliteError, match="use 'mermaid', 'dot' or 'svg'"):
        pipeline.graph("png")
