"""Rendering the stage graph, coloured by state: mermaid, Graphviz DOT, SVG.

By default only stages are drawn, left to right, and each edge is labelled with the artifacts
that flow along it (more than two collapse to "N artifacts"), with a legend of the state
colours. A pipeline more than ``MAX_LR_RANKS`` stages deep is drawn top to bottom instead: left
to right, ten stages in a row need about 1,500 px, and a notebook's output (about 850 px) would
shrink its text to 5 px; top to bottom, it keeps its size. With
``artifacts=True`` every artifact is a node of its own between its producer and its consumers.
"""
from __future__ import annotations

import graphlib
import shutil
import subprocess
from typing import Sequence

from .errors import GraphvizNotFoundError, InvalidArgumentError
from .present import STATE_COLOURS, STATES

__all__ = ["render"]

MAX_EDGE_NAMES = 2  # more artifacts on one edge are shown as "N artifacts"
# the command line shows a stage known from the store only as "stored" (it cannot tell whether
# code it has not loaded changed): drawn in the fresh colours, and named so in the legend
_COLOURS = {**STATE_COLOURS, "stored": STATE_COLOURS["fresh"]}
MAX_LR_RANKS = 5  # stages in a row, left to right, that fit a notebook's output legibly


def render(statuses: Sequence, format: str = "mermaid", artifacts: bool = False) -> str:
    """Render ``Pipeline.status()`` as ``mermaid`` or ``dot`` text, or as ``svg``."""
    if format not in ("mermaid", "dot", "svg"):
        raise InvalidArgumentError(
            f"unknown graph format {format!r}: use 'mermaid', 'dot' or 'svg'")
    graph = _Graph(statuses, artifacts)
    if format == "mermaid":
        return graph.mermaid()
    if format == "dot":
        return graph.dot()
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizNotFoundError(
            "graph(format='svg') needs Graphviz's 'dot' program: install Graphviz "
            "(e.g. apt-get install graphviz), or use format='mermaid' or 'dot'"
        )
    done = subprocess.run([dot, "-Tsvg"], input=graph.dot().encode(), capture_output=True,
                          check=True)
    return done.stdout.decode()


def edge_label(names: Sequence[str]) -> str:
    """``x, y``, or ``3 artifacts`` when there are more than two."""
    if len(names) > MAX_EDGE_NAMES:
        return f"{len(names)} artifacts"
    return ", ".join(names)


class _Graph:
    """Nodes and labelled edges, with ids by position (stage names may differ only by a
    ``-`` and a ``_``; ids must not)."""

    def __init__(self, statuses: Sequence, artifacts: bool):
        self.stages = list(statuses)
        # the states of the legend: every state, and "stored" when the command line uses it
        self.legend = list(STATES) + (["stored"] if any(s.state == "stored"
                                                        for s in self.stages) else [])
        self.ids = {s.name: f"s{i}" for i, s in enumerate(self.stages)}
        producer = {a: s.name for s in self.stages for a in s.produces}
        names: set[str] = set()
        self.direction = "LR"
        self.nodes: list[tuple[str, str, str]] = []  # (id, label, class) of artifact nodes
        self.edges: list[tuple[str, str, str]] = []  # (from id, to id, label)
        if artifacts:
            for s in self.stages:
                names.update(s.produces)
                names.update(s.inputs)
            art = {a: f"a{i}" for i, a in enumerate(sorted(names))}
            self.nodes = [(art[a], a, "artifact") for a in sorted(names)]
            for s in self.stages:
                self.edges += [(self.ids[s.name], art[a], "") for a in s.produces]
                self.edges += [(art[a], self.ids[s.name], "") for a in s.inputs]
            return
        flows: dict[tuple[str, str], list[str]] = {}
        orphans: list[tuple[str, str]] = []  # (artifact, consumer) with no producer known
        for s in self.stages:
            for a in s.inputs:
                p = producer.get(a)
                if p is None or p not in self.ids:
                    orphans.append((a, s.name))
                else:
                    flows.setdefault((p, s.name), []).append(a)
        for (p, c), arts in flows.items():
            self.edges.append((self.ids[p], self.ids[c], edge_label(arts)))
        self.direction = "LR" if _depth(self.stages, flows) <= MAX_LR_RANKS else "TB"
        missing = sorted({a for a, _ in orphans})
        art = {a: f"m{i}" for i, a in enumerate(missing)}
        self.nodes = [(art[a], f"{a} (no producer)", "orphan") for a in missing]
        self.edges += [(art[a], self.ids[c], "") for a, c in orphans]

    def mermaid(self) -> str:
        lines = [f"flowchart {self.direction}"]
        for s in self.stages:
            lines.append(f'    {self.ids[s.name]}["{s.name}"]:::{s.state}')
        for nid, label, cls in self.nodes:
            lines.append(f'    {nid}(["{label}"]):::{cls}')
        for a, b, label in self.edges:
            lines.append(f'    {a} -->|"{label}"| {b}' if label else f"    {a} --> {b}")
        lines.append('    subgraph legend["states"]')
        lines.append("        direction LR")
        lines += [f'        legend_{state}["{state}"]:::{state}' for state in self.legend]
        lines.append("    end")
        for state in self.legend:
            fill, stroke = _COLOURS[state]
            lines.append(f"    classDef {state} fill:{fill},stroke:{stroke},color:#000")
        lines.append("    classDef artifact fill:#ffffff,stroke:#9e9e9e,color:#333")
        lines.append("    classDef orphan fill:#ffffff,stroke:#c62828,color:#333,"
                     "stroke-dasharray:4 3")
        return "\n".join(lines) + "\n"

    def dot(self) -> str:
        lines = ["digraph pipelite {", f"  rankdir={self.direction};",
                 "  nodesep=0.3; ranksep=0.35;",
                 '  node [fontname="Helvetica", fontsize=13];',
                 '  edge [fontname="Helvetica", fontsize=11];']
        for s in self.stages:
            fill, stroke = _COLOURS.get(s.state, STATE_COLOURS["missing"])
            lines.append(f'  "{self.ids[s.name]}" [label="{s.name}\\n({s.state})", shape=box, '
                         f'style="filled,rounded", fillcolor="{fill}", color="{stroke}"];')
        for nid, label, cls in self.nodes:
            style = ', style="dashed", color="#c62828"' if cls == "orphan" else \
                ', color="#9e9e9e"'
            lines.append(f'  "{nid}" [label="{label}", shape=ellipse{style}];')
        for a, b, label in self.edges:
            lines.append(f'  "{a}" -> "{b}"' + (f' [label="{label}"]' if label else "") + ";")
        lines.append('  subgraph cluster_legend { label="states"; fontname="Helvetica"; '
                     'color="#bdbdbd";')
        for state in self.legend:
            fill, stroke = _COLOURS[state]
            lines.append(f'    "legend_{state}" [label="{state}", shape=box, fontsize=11, '
                         f'height=0.3, style="filled,rounded", fillcolor="{fill}", '
                         f'color="{stroke}"];')
        # the legend on one row: a chain of invisible edges left to right, one rank top down
        legend = [f'"legend_{state}"' for state in self.legend]
        lines.append("    " + " -> ".join(legend) + " [style=invis];")
        if self.direction == "TB":  # (left to right, the chain alone makes the row)
            lines.append("    { rank=same; " + "; ".join(legend) + "; }")
        lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"


def _depth(stages: Sequence, flows: dict[tuple[str, str], list[str]]) -> int:
    """How many stages the longest chain of the graph holds (1 for stages with no edges)."""
    before: dict[str, set[str]] = {s.name: set() for s in stages}
    for p, c in flows:
        before.setdefault(c, set()).add(p)
    try:
        order = list(graphlib.TopologicalSorter(before).static_order())
    except graphlib.CycleError:  # status() reports the cycle; draw it top to bottom
        return len(before)
    depth: dict[str, int] = {}
    for name in order:
        depth[name] = 1 + max((depth[p] for p in before.get(name, ())), default=0)
    return max(depth.values(), default=0)
