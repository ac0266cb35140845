"""Fault tests: crashes, races, corruption and interrupts through real processes and stores.

Children run stages from ``fault_stages.py`` and report progress on stdout; the parent
synchronises on those lines (never on a bare sleep) and randomises only the extra delay.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fault_stages
import numpy as np
import pytest

from pipelite import CorruptArtifactError, Pipeline, PipeliteWarning, StaleArtifactError, Store
from pipelite.formats import hash_file

HERE = Path(__file__).resolve().parent
CHILD_TIMEOUT = 60


@pytest.fixture
def store_dir(store_dir):
    """The fault tests' store, with the stages of ``fault_stages`` registered as in the children."""
    fault_stages.register()
    return store_dir


def status_of(pipeline, name):
    (status,) = [s for s in pipeline.status() if s.name == name]
    return status


def spawn(store, stage, params, *, wait_go=False, env=None):
    """Start a child that runs ``stage`` on ``store``; its stdout is a line pipe."""
    import json

    argv = [sys.executable, str(HERE / "fault_stages.py"), str(store), stage, json.dumps(params)]
    if wait_go:
        argv.append("--wait-go")
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, **(env or {})},
    )


def wait_for_line(proc, expected: str) -> None:
    """Block until the child prints ``expected`` (fail if it exits first)."""
    for line in proc.stdout:
        if line.strip() == expected:
            return
    proc.wait(CHILD_TIMEOUT)
    pytest.fail(f"child exited ({proc.returncode}) before printing {expected!r}: "
                f"{proc.stderr.read()}")


def finish(proc) -> str:
    """Wait for a child to exit successfully; return its ``result`` line."""
    out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    assert proc.returncode == 0, err
    return [line for line in out.splitlines() if line.startswith("result ")][-1]


def assert_objects_are_whole(store_dir: Path) -> None:
    """Every file under objects/ is complete: its bytes hash to its name."""
    for path in (store_dir / "objects").glob("*/*"):
        digest = path.name.split(".")[0]
        assert hash_file(str(path)) == digest, f"partial or corrupt object visible: {path}"


# -- 1. kill -9 during a 300 MB write -------------------------------------------------------
@pytest.mark.slow
def test_kill_9_during_a_300_mb_write_never_exposes_a_partial_result(store_dir):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    print(f"random seed {seed}")
    rng.seed(seed)

    # calibrate: how long does the save take here, from "writing" to the child's exit?
    proc = spawn(store_dir, "big_array", {"seed": 0})
    wait_for_line(proc, "writing")
    t0 = time.perf_counter()
    finish(proc)
    window = time.perf_counter() - t0
    # stratified random delays over the whole window and a bit beyond: some kills land
    # mid-write, some after the record's commit
    kills = 6
    delays = [window * 1.3 * (i + rng.random()) / kills for i in range(kills)]
    rng.shuffle(delays)

    outcomes = []
    for i, delay in enumerate(delays, start=1):
        params = {"big_array": {"seed": i}}
        proc = spawn(store_dir, "big_array", params["big_array"])
        wait_for_line(proc, "writing")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=CHILD_TIMEOUT)
        assert proc.returncode in (-signal.SIGKILL, 0)

        pipeline = Pipeline(store=str(store_dir), params=params)
        status = status_of(pipeline, "big_array")
        if status.state == "fresh":  # the kill came after the commit: the result is whole
            value = pipeline.load("big", verify=True)
            outcomes.append("committed")
        else:
            assert status.state in ("missing", "stale"), status
            with pytest.raises(StaleArtifactError):
                pipeline.load("big")
            outcomes.append("not committed")
        assert_objects_are_whole(store_dir)

        result = pipeline.run("big_array")
        assert ("big_array" in result.executed) == (outcomes[-1] == "not committed")
        value = result["big"]
        assert value.shape == (300 * fault_stages.MIB // 8,)
        assert value[0] == value[-1] == float(i)
        assert Pipeline(store=str(store_dir), params=params).load("big", verify=True)[-1] == i
        del value, result
    print(f"window {window:.3f} s, delays {[round(d, 3) for d in delays]}, outcomes {outcomes}")
    assert "not committed" in outcomes, "no kill landed during the write: widen the delays"
    shutil.rmtree(store_dir)  # ~2 GiB: do not leave it in pytest's kept temp dirs


# -- 2. four processes, one computation ----------------------------------------------------
@pytest.mark.slow
def test_four_processes_running_the_same_stage_compute_it_once(store_dir, tmp_path):
    counter = tmp_path / "executions.txt"
    params = {"counter": str(counter), "value": 7}
    procs = [spawn(store_dir, "slow_counted", params, wait_go=True) for _ in range(4)]
    for proc in procs:
        wait_for_line(proc, "ready")
    for proc in procs:  # release them together
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [finish(proc).split() for proc in procs]

    assert len(counter.read_text().splitlines()) == 1
    assert sorted(executed for _, _, executed, _ in results) == ["False", "False", "False", "True"]
    # the three others really ran concurrently: they waited for the one computing (1.5 s)
    assert all(float(seconds) > 0.5 for _, _, _, seconds in results)
    expected = fault_stages.value_hash(np.arange(100_000, dtype=np.int64) * 7)
    assert {h for _, h, _, _ in results} == {expected}
    pipeline = Pipeline(store=str(store_dir), params={"slow_counted": params})
    assert pipeline.run("slow_counted").executed == []


# -- 3. corrupt files ------------------------------------------------------------------------
SMALL_MIB, BIG_MIB = 1, 20  # hashed on every load / only size-checked unless verify=True


def _stored_object(pipeline, stage) -> Path:
    (info,) = pipeline.record(stage).outputs.values()
    return Path(pipeline.store.object_path(info))


def _flip_a_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 4096)


def _run_big_array(store_dir, mib):
    pipeline = Pipeline(store=str(store_dir), params={"big_array": {"seed": 3, "mib": mib}})
    pipeline.run("big_array")
    return pipeline, _stored_object(pipeline, "big_array"), mib


@pytest.fixture(params=[SMALL_MIB, BIG_MIB], ids=["small", "big"])
def stored_array(request, store_dir):
    """A pipeline whose big_array stage is fresh, the path of its stored object, its MiB."""
    return _run_big_array(store_dir, request.param)


@pytest.fixture
def small_stored_array(store_dir):
    """As ``stored_array``, for a file small enough to be hashed on every load."""
    return _run_big_array(store_dir, SMALL_MIB)


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate], ids=["flipped", "truncated"])
def test_a_damaged_object_is_reported_by_path_on_a_verified_load(stored_array, damage):
    pipeline, path, _ = stored_array
    damage(path)
    with pytest.raises(CorruptArtifactError) as err:
        pipeline.load("big", verify=True)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate], ids=["flipped", "truncated"])
def test_a_damaged_object_is_recomputed_after_it_is_detected(stored_array, damage):
    pipeline, path, mib = stored_array
    damage(path)
    with pytest.raises(CorruptArtifactError):
        pipeline.load("big", verify=True)
    result = pipeline.run("big_array")
    assert result.executed == ["big_array"]
    assert np.all(result["big"] == 3)
    assert hash_file(str(path)) == path.name.split(".")[0]  # the bad file was replaced
    assert pipeline.load("big", verify=True)[-1] == 3
    again = Pipeline(store=pipeline.store.url, params=pipeline.params)
    assert again.run("big_array").executed == []


def test_a_truncated_object_is_detected_by_run_without_verify(stored_array):
    pipeline, path, _ = stored_array
    _truncate(path)
    with pytest.warns(PipeliteWarning, match=str(path)):
        result = pipeline.run("big_array")
    assert result.executed == ["big_array"]
    assert result["big"].shape == (stored_array[2] * fault_stages.MIB // 8,)
    assert pipeline.load("big", verify=True)[-1] == 3


def test_a_flipped_byte_in_a_small_object_is_detected_by_a_plain_load(small_stored_array):
    pipeline, path, _ = small_stored_array
    _flip_a_byte(path)
    with pytest.raises(CorruptArtifactError, match=str(path)):
        Pipeline(store=pipeline.store.url, params=pipeline.params).load("big")


def test_a_flipped_byte_in_a_small_object_is_detected_and_recomputed_by_run(small_stored_array):
    pipeline, path, _ = small_stored_array
    _flip_a_byte(path)
    with pytest.warns(PipeliteWarning, match=str(path)):
        result = Pipeline(store=pipeline.store.url, params=pipeline.params).run("big_array")
    assert result.executed == ["big_array"]
    assert np.all(result["big"] == 3) and hash_file(str(path)) == path.name.split(".")[0]


def test_a_corrupt_input_is_recomputed_before_its_downstream_stage_runs(store_dir):
    from pipelite import stage

    @stage(outputs="total")
    def total(big):
        return float(big.sum())

    params = {"big_array": {"seed": 2, "mib": SMALL_MIB}}
    pipeline = Pipeline(store=str(store_dir), params=params)
    pipeline.run("big_array")
    path = _stored_object(pipeline, "big_array")
    _flip_a_byte(path)
    with pytest.warns(PipeliteWarning, match=str(path)):
        result = pipeline.run("total")
    assert result["total"] == 2.0 * SMALL_MIB * fault_stages.MIB // 8
    assert sorted(result.executed) == ["big_array", "total"]


# -- 4. Ctrl-C -------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_in_a_child_stage_stores_nothing_and_marks_it_failed(store_dir):
    previous = spawn(store_dir, "interruptible", {"n": 1})
    finish(previous)
    before = sorted(p.relative_to(store_dir) for p in (store_dir / "objects").rglob("*"))

    proc = spawn(store_dir, "interruptible", {"n": 2}, env={"FAULT_BLOCK_SECONDS": "60"})
    wait_for_line(proc, "computing")
    time.sleep(random.uniform(0, 0.2))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=CHILD_TIMEOUT)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err

    assert sorted(p.relative_to(store_dir) for p in (store_dir / "objects").rglob("*")) == before
    interrupted = Pipeline(store=str(store_dir), params={"interruptible": {"n": 2}})
    status = status_of(interrupted, "interruptible")
    assert status.state == "failed" and "KeyboardInterrupt" in status.error
    old = Pipeline(store=str(store_dir), params={"interruptible": {"n": 1}})
    assert status_of(old, "interruptible").state == "fresh"
    assert old.load("interrupted_value")[0] == 1  # the previous result is still in place

    result = interrupted.run("interruptible")
    assert result.executed == ["interruptible"] and result["interrupted_value"][0] == 2
    assert status_of(interrupted, "interruptible").state == "fresh"


@pytest.mark.slow
def test_ctrl_c_during_a_save_stores_nothing(store_dir):
    proc = spawn(store_dir, "big_array", {"seed": 5, "mib": 200})
    wait_for_line(proc, "writing")
    time.sleep(random.uniform(0, 0.05))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=CHILD_TIMEOUT)
    if proc.returncode == 0:
        pytest.skip("the save finished before the signal arrived")
    assert "KeyboardInterrupt" in err
    pipeline = Pipeline(store=str(store_dir), params={"big_array": {"seed": 5, "mib": 200}})
    assert status_of(pipeline, "big_array").state == "failed"
    assert not list((store_dir / "objects").rglob("*.npy"))
    assert not list((store_dir / "tmp").glob("*"))  # the partial file was removed
    assert pipeline.run("big_array")["big"][-1] == 5


# -- 5. stores other than a local directory ----------------------------------------------------
@pytest.fixture
def s3_endpoint(moto_s3):
    """A real S3 API (moto, a server process on loopback: conftest.py), with one bucket."""
    return moto_s3[0]


def _s3_store(endpoint: str, prefix: str) -> Store:
    return Store(f"s3://pipelite-test/{prefix}", storage_options={
        "key": "test", "secret": "test",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    })


def _run_and_reload(make_store, monkeypatch, tmp_path):
    from pipelite import stage

    @stage(outputs="matrix")
    def matrix(*, n: int = 300):
        return np.arange(n * n, dtype=np.float64).reshape(n, n)

    @stage(outputs="trace")
    def trace(matrix):
        return float(np.trace(matrix))

    # each Pipeline gets its own local cache directory, so the second must fetch from the store
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache1"))
    first = Pipeline(store=make_store())
    out = first.run()
    assert sorted(out.executed) == ["matrix", "trace"]

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    second = Pipeline(store=make_store())
    assert {s.name: s.state for s in second.status()} == {"matrix": "fresh", "trace": "fresh"}
    again = second.run()
    assert again.executed == []
    loaded = second.load("matrix")
    assert isinstance(loaded, np.ndarray) and not loaded.flags.writeable
    np.testing.assert_array_equal(loaded, np.arange(90_000.0).reshape(300, 300))
    assert second.load("trace", verify=True) == out["trace"]
    assert os.listdir(tmp_path / "cache2")  # it really came through the store's bytes


def test_a_memory_store_runs_caches_and_loads_arrays(monkeypatch, tmp_path):
    url = f"memory://pipelite-{uuid.uuid4().hex}"
    _run_and_reload(lambda: Store(url), monkeypatch, tmp_path)


def test_an_s3_store_runs_caches_and_loads_arrays(s3_endpoint, monkeypatch, tmp_path):
    prefix = uuid.uuid4().hex
    _run_and_reload(lambda: _s3_store(s3_endpoint, prefix), monkeypatch, tmp_path)


def test_a_pipeline_passes_storage_options_to_an_s3_store(s3_endpoint):
    from pipelite import stage

    @stage(outputs="answer")
    def answer():
        return 42

    opts = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": s3_endpoint}}
    url = f"s3://pipelite-test/{uuid.uuid4().hex}"
    assert Pipeline(store=url, storage_options=opts).run()["answer"] == 42
    assert Pipeline(store=url, storage_options=opts).run().executed == []
