"""Rendering the stage graph, coloured by state: mermaid, Graphviz DOT, SVG."""
from __future__ import annotations

import shutil
import subprocess
from typing import Sequence

from .errors import GraphvizNotFoundError, InvalidArgumentError
from .present import STATE_COLOURS

__all__ = ["render"]


def _node_id(kind: str, name: str) -> str:
    return f"{kind}_{name.replace('-', '_')}"


def render(statuses: Sequence, format: str = "mermaid") -> str:
    """Render ``Pipeline.status()`` as ``mermaid`` or ``dot`` text, or as ``svg``."""
    if format == "mermaid":
        return _mermaid(statuses)
    if format == "dot":
        return _dot(statuses)
    if format == "svg":
        dot = shutil.which("dot")
        if dot is None:
            raise GraphvizNotFoundError(
                "graph(format='svg') needs Graphviz's 'dot' program: install Graphviz "
                "(e.g. apt-get install graphviz), or use format='mermaid' or 'dot'"
            )
        done = subprocess.run([dot, "-Tsvg"], input=_dot(statuses).encode(),
                              capture_output=True, check=True)
        return done.stdout.decode()
    raise InvalidArgumentError(f"unknown graph format {format!r}: use 'mermaid', 'dot' or 'svg'")


def _edges(statuses: Sequence) -> tuple[list[tuple[str, str]], list[tuple[str, str]], set[str]]:
    outs, ins, artifacts = [], [], set()
    for s in statuses:
        for name in s.produces:
            outs.append((s.name, name))
            artifacts.add(name)
        for i in s.inputs:
            ins.append((i, s.name))
            artifacts.add(i)
    return outs, ins, artifacts


def _mermaid(statuses: Sequence) -> str:
    lines = ["flowchart LR"]
    outs, ins, artifacts = _edges(statuses)
    for s in statuses:
        lines.append(f'    {_node_id("s", s.name)}["{s.name}"]:::{s.state}')
    for a in sorted(artifacts):
        lines.append(f'    {_node_id("a", a)}(["{a}"]):::artifact')
    for st, a in outs:
        lines.append(f"    {_node_id('s', st)} --> {_node_id('a', a)}")
    for a, st in ins:
        lines.append(f"    {_node_id('a', a)} --> {_node_id('s', st)}")
    for state, (fill, stroke) in STATE_COLOURS.items():
        lines.append(f"    classDef {state} fill:{fill},stroke:{stroke},color:#000")
    lines.append("    classDef artifact fill:#ffffff,stroke:#9e9e9e,color:#333")
    return "\n".join(lines) + "\n"


def _dot(statuses: Sequence) -> str:
    lines = ["digraph pipelite {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    outs, ins, artifacts = _edges(statuses)
    for s in statuses:
        fill, stroke = STATE_COLOURS.get(s.state, STATE_COLOURS["missing"])
        lines.append(f'  "{_node_id("s", s.name)}" [label="{s.name}\\n({s.state})", shape=box, '
                     f'style="filled,rounded", fillcolor="{fill}", color="{stroke}"];')
    for a in sorted(artifacts):
        lines.append(f'  "{_node_id("a", a)}" [label="{a}", shape=ellipse, color="#9e9e9e"];')
    for st, a in outs:
        lines.append(f'  "{_node_id("s", st)}" -> "{_node_id("a", a)}";')
    for a, st in ins:
        lines.append(f'  "{_node_id("a", a)}" -> "{_node_id("s", st)}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
