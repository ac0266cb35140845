"""The graph in mermaid, DOT and SVG, coloured by state (pipelite/graph.py)."""
from __future__ import annotations

import pytest

from pipelite import GraphvizNotFoundError, PipeliteError


def test_mermaid_colours_nodes_by_state(pipeline, two_stages):
    pipeline.run("a")
    text = pipeline.graph()
    assert text.startswith("flowchart LR")
    assert 's_a["a"]:::fresh' in text and 's_b["b"]:::missing' in text
    assert "s_a --> a_x" in text and "a_x --> s_b" in text
    for state in ("fresh", "stale", "missing", "failed"):
        assert f"classDef {state} " in text


def test_dot_output_is_a_digraph_with_states(pipeline, two_stages):
    text = pipeline.graph("dot")
    assert text.startswith("digraph pipelite {") and '"s_a" -> "a_x"' in text
    assert "(missing)" in text


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
