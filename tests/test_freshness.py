"""Freshness rules (pipelite._freshness.check), with no stage ever run.

Records are written straight into a store, for the fingerprint a stage has now; every stage
body raises, so a check that ran one would fail the test.
"""
from __future__ import annotations

import pytest

from pipelite import Registry, stage
from pipelite._freshness import check
from pipelite._resolve import Graph
from pipelite.errors import CycleError
from pipelite.fingerprint import fingerprint_of
from pipelite.store import FailureRecord, InputRecord, OutputRecord, ResultRecord, Store


def _object(digit: str) -> OutputRecord:
    digest = digit * 32
    return OutputRecord(digest, 1, "json", f"objects/{digest[:2]}/{digest}.json")


class World:
    """A registry of stages and a store holding records written by hand."""

    def __init__(self, tmp_path):
        self.registry = Registry()
        self.store = Store(str(tmp_path / "store"))

    def stage(self, **kwargs):
        return stage(registry=self.registry, **kwargs)

    def store_result(self, name: str, outputs: dict[str, str], params: dict | None = None,
                     inputs: dict[str, str] | None = None) -> ResultRecord:
        """Record a result of ``name`` as if it had run with ``params`` on inputs of these
        hashes (``{artifact: digit}``), producing objects of hashes ``{artifact: digit}``."""
        st = self.registry.get(name)
        assert st is not None
        hashes = {i: d * 32 for i, d in (inputs or {}).items()}
        resolved = st.resolve_params(params or {})
        fp = fingerprint_of(st, resolved, hashes)
        producers = self.registry.producers()
        return self.store.write_result(ResultRecord(
            stage=name, fingerprint=fp.digest, started="2026-01-01T00:00:00+00:00",
            duration=1.0, outputs={k: _object(d) for k, d in outputs.items()},
            inputs={i: InputRecord(h, producers.get(i)) for i, h in hashes.items()},
            params={k: repr(v) for k, v in resolved.items()}, parts=fp.parts))

    def check(self, *targets: str, params: dict | None = None, cut_cycles: bool = False):
        graph = Graph(self.registry, self.store)
        return check(graph, list(targets) or graph.names(), {}, params, cut_cycles=cut_cycles)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)

    @w.stage(outputs="x")
    def source(*, n=1):
        raise AssertionError("a check must not run a stage")

    @w.stage(outputs="y")
    def double(x):
        raise AssertionError("a check must not run a stage")

    return w


def test_a_stored_result_for_the_current_fingerprint_is_fresh(world):
    world.store_result("source", {"x": "1"})
    world.store_result("double", {"y": "2"}, inputs={"x": "1"})
    found = world.check("double")
    assert found.order == ["source", "double"]
    assert [found[n].state for n in found.order] == ["fresh", "fresh"]
    record = found["double"].record
    assert record is not None and record.outputs["y"].hash == "2" * 32


def test_no_stored_result_is_missing_and_its_consumers_wait_for_it(world):
    found = world.check("double")
    assert (found["source"].state, found["source"].reasons) == ("missing", ["no stored result"])
    assert found["double"].state == "missing"
    assert found["double"].reasons == ["upstream stage 'source' is missing: no stored result"]


def test_a_changed_parameter_makes_a_stage_stale_and_says_from_what_to_what(world):
    world.store_result("source", {"x": "1"}, params={"n": 1})
    found = world.check("source", params={"source": {"n": 2}})
    assert found["source"].state == "stale"
    assert found["source"].reasons == ["parameter 'n' changed: 1 -> 2"]


def test_an_upstream_whose_content_changed_makes_its_consumer_stale(world):
    world.store_result("double", {"y": "2"}, inputs={"x": "1"})
    world.store_result("source", {"x": "3"})  # source's newest result holds other content
    found = world.check("double")
    assert found["source"].state == "fresh"
    assert found["double"].state == "stale"
    assert found["double"].reasons == ["input 'x' changed (new content from stage 'source')"]


def test_a_stale_upstream_makes_its_consumer_stale_without_fingerprinting_it(world):
    world.store_result("source", {"x": "1"}, params={"n": 1})
    world.store_result("double", {"y": "2"}, inputs={"x": "1"})
    found = world.check("double", params={"source": {"n": 5}})
    assert found["double"].state == "stale" and found["double"].fingerprint is None
    assert found["double"].reasons == [
        "upstream stage 'source' is stale: parameter 'n' changed: 1 -> 5"]


def test_a_failed_run_at_the_current_fingerprint_is_failed_and_a_success_clears_it(world):
    fp = fingerprint_of(world.registry.get("source"), {"n": 1}, {}).digest
    world.store.write_failure(FailureRecord("source", fp, "ValueError: bad row", "Traceback"))
    found = world.check("source")
    assert found["source"].state == "failed"
    assert found["source"].reasons == ["last run failed: ValueError: bad row"]
    world.store_result("source", {"x": "1"})
    assert world.check("source")["source"].state == "fresh"


def test_a_failure_at_another_fingerprint_does_not_count(world):
    world.store.write_failure(FailureRecord("source", "f" * 32, "ValueError: old"))
    assert world.check("source")["source"].state == "missing"


def test_a_stage_known_only_from_the_store_is_fresh_and_says_it_is_not_defined(world, tmp_path):
    world.store_result("source", {"x": "1"})
    other = Registry()  # a new session: nothing defined yet
    found = check(Graph(other, world.store), ["source"], {})
    assert found["source"].state == "fresh" and found["source"].stage is None
    assert found["source"].reasons == [
        "not defined in this session (stored result from 2026-01-01 00:00)"]


def test_a_cycle_raises_unless_cut_then_its_stages_are_stale_with_the_cycle_as_reason(tmp_path):
    w = World(tmp_path)

    @w.stage(outputs="a")
    def one(b):
        raise AssertionError

    @w.stage(outputs="b")
    def two(a):
        raise AssertionError

    with pytest.raises(CycleError, match="cycle"):
        w.check("one")
    found = w.check(cut_cycles=True)
    assert {found[n].state for n in found.order} == {"missing"}
    assert all("part of a cycle" in found[n].reasons[0] for n in found.order)


def test_stages_ready_together_keep_their_definition_order(tmp_path):
    w = World(tmp_path)
    for name in ("zeta", "alpha", "mid"):
        w.stage(outputs=f"out_{name}", name=name)(lambda: None)
    assert w.check().order == ["zeta", "alpha", "mid"]
