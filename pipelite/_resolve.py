"""Resolution: which stage produces each artifact, what a stage needs, and in which order.

Stages couple only through artifact names. ``Graph`` answers, for one registry and one store:
who produces an artifact (registered stages first, then stages known only from the store, e.g.
after a kernel restart), which stages a stage depends on, and the order to check or run them in.
Nothing here reads a stored value or computes a fingerprint.
"""
from __future__ import annotations

import difflib
import graphlib
from typing import Iterable, Iterator, Mapping

from .errors import CycleError, PipeliteError, UnknownStageError
from .stage import Registry, Stage, stage_of
from .store import Store

__all__ = ["Graph", "Producers"]


class Producers(Mapping[str, str]):
    """Artifact -> producing stage: registered stages first; the store is listed only when a
    name is not found there (so a run of fresh stages never lists the store)."""

    def __init__(self, registry: Registry, store: Store):
        self._registry = registry
        self._store = store
        self._registered = registry.producers()  # a read-only view, kept in step
        self._extra: dict[str, str] | None = None

    def _store_only(self) -> dict[str, str]:
        """Artifacts of stages known only from the store (e.g. after a kernel restart)."""
        if self._extra is None:
            found: dict[str, str] = {}
            for name in self._store.stages():
                if name not in self._registry:
                    latest = self._store.latest(name)
                    for out in latest.outputs if latest is not None else ():
                        if out not in self._registered:
                            found.setdefault(out, name)
            self._extra = found
        return self._extra

    def __getitem__(self, key: str) -> str:
        found = self._registered.get(key)
        if found is None:
            found = self._store_only()[key]
        return found

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        found = self._registered.get(key)  # the usual case: one lookup, no exception
        if found is None:
            found = self._store_only().get(key, default)
        return found

    def __contains__(self, key: object) -> bool:
        return key in self._registered or key in self._store_only()

    def all(self) -> dict[str, str]:
        return {**self._store_only(), **self._registered}

    def __iter__(self) -> Iterator[str]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self.all())


class Graph:
    """The stages of ``registry`` plus those known only from ``store``, and their edges."""

    def __init__(self, registry: Registry, store: Store):
        self.registry = registry
        self.store = store
        self._producers: Producers | None = None

    @property
    def producers(self) -> Producers:
        if self._producers is None:
            for st in self.registry.with_unknown_outputs():
                if st.outputs is None:  # not run in this session: learn them from the store
                    latest = self.store.latest(st.name)
                    if latest is not None:
                        try:
                            self.registry.learn_outputs(st, latest.outputs)
                        except PipeliteError:
                            pass
            self._producers = Producers(self.registry, self.store)
        return self._producers

    def names(self) -> list[str]:
        """Registered stages in definition order, then those known only from the store."""
        names = self.registry.names()
        return names + [n for n in self.store.stages() if n not in self.registry]

    def stage_name(self, ref: object) -> str:
        """The name of a stage given as a name, a ``Stage`` or a decorated function/class."""
        if type(ref) is str and ref in self.registry:  # the usual case, first
            return ref
        st = stage_of(ref)
        if st is not None:
            return st.name
        if isinstance(ref, Stage):
            return ref.name
        if not isinstance(ref, str):
            raise UnknownStageError(f"{ref!r} is not a stage: pass a stage name")
        if ref in self.registry:
            return ref
        known = self.names()
        if ref in known:
            return ref
        hint = difflib.get_close_matches(ref, known, n=1)
        raise UnknownStageError(
            f"no stage named '{ref}'"
            + (f"; did you mean '{hint[0]}'?" if hint
               else f"; known stages: {', '.join(known) or 'none'}")
        )

    def targets(self, target: object) -> list[str]:
        """``target`` (None for every registered stage, a name, or a list) as stage names."""
        if target is None:
            return self.registry.names()
        if isinstance(target, (list, tuple, set)):
            return [self.stage_name(t) for t in target]
        return [self.stage_name(target)]

    def deps(self, name: str) -> list[str]:
        """The stages ``name`` reads artifacts from."""
        st = self.registry.get(name)
        if st is None:  # known from the store only: its record says what it was made from
            latest = self.store.latest(name)
            inputs = latest.inputs.values() if latest is not None else ()
            return [i.stage for i in inputs if i.stage is not None and i.stage != name]
        get = self.producers.get
        return [p for p in map(get, st.inputs) if p is not None and p != name]

    def order(self, roots: Iterable[str], cycles: dict[str, str] | None = None) -> list[str]:
        """Stages needed for ``roots``, upstream first. A cycle raises ``CycleError``, unless
        ``cycles`` is given: then its stages are cut loose and listed there (for status)."""
        graph: dict[str, list[str]] = {}
        stack = list(roots)
        while stack:
            name = stack.pop()
            if name in graph:
                continue
            graph[name] = self.deps(name)
            stack.extend(graph[name])
        order = self._depth_first(graph)
        if order is not None:  # no cycle met
            return order
        while True:  # graphlib names a cycle's members: cut them loose (or raise), try again
            try:
                graphlib.TopologicalSorter(graph).prepare()  # finds cycles
            except graphlib.CycleError as exc:
                members = exc.args[1]
                text = " -> ".join(members)
                if cycles is None:
                    raise CycleError(
                        f"stages form a cycle ({text}): an artifact cannot depend on itself; "
                        f"split one of these stages"
                    ) from None
                for node in members:
                    cycles[node] = text
                    graph[node] = [d for d in graph[node] if d not in members]
                continue
            order = self._depth_first(graph)
            assert order is not None  # graphlib found no cycle
            return order

    def _depth_first(self, graph: Mapping[str, list[str]]) -> list[str] | None:
        """Upstream first, each stage right after what it needs; among stages ready at the
        same time, the order they were defined in (so a notebook's stages keep its cells'
        order). None if the walk meets a cycle (a stage on the path to itself)."""
        if len(graph) == 1:  # one stage: a cycle only if it needs itself
            ((only, needs),) = graph.items()
            return None if needs else [only]
        rank = {name: i for i, name in enumerate(self.registry.names())}

        def key(n: str) -> tuple[int, str]:
            return (rank.get(n, len(rank)), n)

        order: list[str] = []
        placed: set[str] = set()
        for root in sorted(graph, key=key):
            walk = [(root, iter(sorted(graph[root], key=key)))]  # no recursion limit
            path = {root}  # the stages on the walk: meeting one again is a cycle
            while walk:
                node, deps = walk[-1]
                if node in placed:
                    walk.pop()
                    path.discard(node)
                    continue
                dep = next((d for d in deps if d not in placed), None)
                if dep is None:
                    placed.add(node)
                    order.append(node)
                    walk.pop()
                    path.discard(node)
                elif dep in path:
                    return None
                else:
                    path.add(dep)
                    walk.append((dep, iter(sorted(graph[dep], key=key))))
        return order
