"""The ``pipelite`` command: inspect and tidy a store, run a notebook's stages headless."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .errors import PipeliteError

__all__ = ["main"]


def _pipeline(store: str):
    from .pipeline import Pipeline

    return Pipeline(store=store)


def format_status(statuses: Sequence) -> str:
    """A plain-text table of ``Pipeline.status()``."""
    from .store import _human_bytes

    rows = [("STAGE", "STATE", "LAST RUN", "TOOK", "OUTPUTS", "WHY")]
    for s in statuses:
        outs = ", ".join(f"{o.name} ({_human_bytes(o.size)})" for o in s.outputs)
        rows.append((
            s.name + ("" if s.defined else " *"),
            s.state,
            f"{s.last_run:%Y-%m-%d %H:%M}" if s.last_run else "-",
            f"{s.duration:.3g}s" if s.duration is not None else "-",
            outs or "-",
            "; ".join(s.reasons) or "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    if any(not s.defined for s in statuses):
        lines.append("* known from the store only (not defined in this session)")
    return "\n".join(line.rstrip() for line in lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipelite", description="Inspect a PipeLite store or run a notebook's stages.")
    parser.add_argument("--store", default=".pipelite",
                        help="store location: a path or fsspec URL (default: ./.pipelite)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="list the stages in the store and their last results")
    g = sub.add_parser("graph", help="print the stage graph")
    g.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid")
    gc = sub.add_parser("gc", help="delete all but the newest results per stage")
    gc.add_argument("--keep", type=int, default=1, help="results to keep per stage (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipelite`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        pipe = _pipeline(args.store)
        if args.command == "status":
            print(format_status(pipe.status()))
        elif args.command == "graph":
            print(pipe.graph(args.format), end="")
        elif args.command == "gc":
            print(pipe.gc(keep=args.keep))
    except PipeliteError as exc:
        print(f"pipelite: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
