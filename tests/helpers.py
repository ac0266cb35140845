"""Test helpers: define code the way a notebook does (source kept in linecache, re-run cells)."""
from __future__ import annotations

import itertools
import linecache
import textwrap

_counter = itertools.count()


def run_cell(source: str, namespace: dict) -> dict:
    """Execute ``source`` like a notebook cell: its source is retrievable by ``inspect``."""
    source = textwrap.dedent(source)
    filename = f"<cell-{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace.setdefault("__name__", "__main__")
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def notebook() -> dict:
    """A fresh namespace standing in for a notebook's globals (``stage`` imported)."""
    from pipelite import stage

    return {"__name__": "__main__", "stage": stage}
