"""What every benchmark here prints: its rows, as a markdown table of PipeLite against a
baseline, ratios PipeLite / baseline, and the machine it ran on."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass


@dataclass
class Row:
    benchmark: str
    pipelite: float  # seconds
    baseline_name: str
    baseline: float | None  # seconds
    target: str
    met: bool | None


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} µs"


def table(rows: list[Row]) -> str:
    out = ["| benchmark | pipelite | baseline | baseline time | ratio | target | met |",
           "|---|---:|---|---:|---:|---|:-:|"]
    for r in rows:
        ratio = f"{r.pipelite / r.baseline:.2f}x" if r.baseline else "-"
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        out.append(f"| {r.benchmark} | {fmt_time(r.pipelite)} | {r.baseline_name} | "
                   f"{fmt_time(r.baseline)} | {ratio} | {r.target} | {met} |")
    return "\n".join(out)


def machine(versions: str, scratch: str) -> str:
    """The machine, the versions measured (``"numpy 2.4, ..."``) and the scratch folder."""
    return "\n".join([
        f"- machine: {platform.platform()}, {os.cpu_count()} cores, {platform.processor() or '?'}",
        f"- Python {platform.python_version()}, {versions}",
        f"- scratch dir: {scratch}",
    ])
