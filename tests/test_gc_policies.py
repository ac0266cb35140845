"""gc's policies (issue 12): ``max_size`` and ``max_age`` besides ``keep``, least recently used
first, never a fresh stage's result; the use stamps they go by (``used/``, pipelite/_retention.py)
and what a hostile stamp may not do; the ``.gitignore`` a new store gets.

Times are moved, not waited for: ``clock`` sets the time uses are stamped and judged by
(``pipelite._retention.now``); records keep the real time their run started.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
import uuid

import fsspec
import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from pipelite import Pipeline, Registry, Store, _retention, stage
from pipelite._retention import STAMP_LIMIT, USED_EVERY
from pipelite.cli import main

DAY = 86400.0


@pytest.fixture
def clock(monkeypatch):
    """The time PipeLite stamps uses with and judges them by: ``clock.at(seconds)`` moves it
    to that many seconds after the test started."""

    class Clock:
        start = time.time()
        now = start

        def at(self, offset: float) -> float:
            self.now = self.start + offset
            return self.now

    c = Clock()
    monkeypatch.setattr(_retention, "now", lambda: c.now)
    return c


def define_variants():
    """Stage ``f``: one result per parameter value, each an object of its own (8 KiB)."""

    @stage(outputs="v")
    def f(*, n=0):
        return np.full(1000, n)

    return f


def by_n(store: Store) -> dict[int, str]:
    """The stored results of ``f``: parameter n -> fingerprint."""
    return {int(r.params["n"]): r.fingerprint for r in store.records_of("f")}


def object_size(store: Store, fingerprint: str, stage_name: str = "f") -> int:
    rec = store.record(stage_name, fingerprint)
    assert rec is not None
    return sum(o.size for o in rec.objects())


def run_variants(pipe: Pipeline, ns) -> None:
    for n in ns:
        pipe.run("f", params={"f": {"n": n}})


# -- max_size: least recently used first -------------------------------------------------------
def test_max_size_removes_the_least_recently_used_results_first(store_dir, clock):
    define_variants()
    pipe = Pipeline(store_dir, params={"f": {"n": 3}})  # n=3 is current: fresh, protected
    run_variants(pipe, [0, 1, 2, 3])
    fps = by_n(pipe.store)
    clock.at(1 * DAY)
    assert pipe.run("f", params={"f": {"n": 1}}).executed == []  # a hit: n=1 used
    clock.at(2 * DAY)
    run_id = pipe.store.record("f", fps[0]).run_id
    assert list(pipe.load("v", version=run_id)) == [0] * 1000  # a load: n=0 used
    clock.at(3 * DAY)  # n=2 was never used: used when its run ended, the longest ago
    one = object_size(pipe.store, fps[0])
    report = pipe.gc(keep=10, max_size=3 * one, grace=0)
    assert set(by_n(pipe.store)) == {0, 1, 3}
    assert report.least_used == 1 and report.records == 1 and report.objects == 1
    report = pipe.gc(keep=10, max_size=2 * one, grace=0)
    assert set(by_n(pipe.store)) == {0, 3}  # n=1 (used on day 1) before n=0 (day 2)
    assert "1 least recently used (max_size 15.9 KiB)" in str(report)
    assert report.above_max_size == 0 and "still used" not in str(report)


def test_a_result_is_stamped_at_most_once_an_hour_per_process(store_dir, clock):
    define_variants()
    pipe = Pipeline(store_dir)
    pipe.run("f")
    (fp,) = by_n(pipe.store).values()
    stamp = store_dir / "used" / "f" / fp

    def stamped() -> float:
        return float(stamp.read_text())

    first = clock.at(DAY)
    pipe.load("v")
    assert stamped() == pytest.approx(first, abs=0.01)
    clock.at(DAY + USED_EVERY / 2)
    pipe.load("v")
    pipe.run("f")
    assert stamped() == pytest.approx(first, abs=0.01)  # remembered: no second write
    later = clock.at(DAY + USED_EVERY + 1)
    pipe.run("f")
    assert stamped() == pytest.approx(later, abs=0.01)


def test_a_load_does_not_change_anything_under_records(store_dir, clock):
    define_variants()
    pipe = Pipeline(store_dir)
    pipe.run("f")

    def records():
        return {str(p): p.stat().st_mtime_ns for p in (store_dir / "records").rglob("*")}

    before = records()
    clock.at(DAY)
    pipe.load("v")
    pipe.run("f")
    assert (store_dir / "used" / "f").is_dir() and records() == before


# -- max_age ----------------------------------------------------------------------------------
def test_max_age_drops_results_unused_for_longer_and_keeps_recently_used_ones(store_dir, clock):
    define_variants()
    pipe = Pipeline(store_dir, params={"f": {"n": 2}})
    run_variants(pipe, [0, 1, 2])
    clock.at(10 * DAY)
    pipe.run("f", params={"f": {"n": 0}})  # used today
    report = pipe.gc(keep=10, max_age="5d", grace=0)
    # n=1, unused for 10 days, goes; n=2 too is unused, but it is the fresh one
    assert set(by_n(pipe.store)) == {0, 2}
    assert report.unused == 1 and "1 unused for over 5 d (max_age)" in str(report)
    assert pipe.run("f", params={"f": {"n": 0}}).executed == []


def test_a_result_never_used_counts_as_used_when_its_run_ended(store_dir, clock):
    define_variants()
    pipe = Pipeline(store_dir, params={"f": {"n": 1}})
    run_variants(pipe, [0, 1])  # n=0 is never used
    clock.at(DAY / 2)
    assert pipe.gc(keep=5, max_age="1d", grace=0).records == 0
    clock.at(2 * DAY)
    assert pipe.gc(keep=5, max_age="1d", grace=0).unused == 1
    assert set(by_n(pipe.store)) == {1}


def test_max_age_also_removes_results_within_keep(store_dir, clock):
    define_variants()
    pipe = Pipeline(store_dir, params={"f": {"n": 1}})
    run_variants(pipe, [0, 1])
    clock.at(10 * DAY)
    report = pipe.gc(keep=5, max_age="1d", grace=0)  # keep limits the count; it does not shield
    assert set(by_n(pipe.store)) == {1} and report.unused == 1 and report.beyond_keep == 0


# -- what is never deleted --------------------------------------------------------------------
def test_a_fresh_stages_result_survives_max_size_zero_and_a_tiny_max_age(store_dir, clock):
    define_variants()
    pipe = Pipeline(store_dir)
    pipe.run("f")
    clock.at(30 * DAY)
    report = pipe.gc(max_size=0, max_age=1, grace=0)
    assert report.records == 0 and len(by_n(pipe.store)) == 1
    size = object_size(pipe.store, next(iter(by_n(pipe.store).values())))
    assert report.above_max_size == size
    assert str(report).endswith("; 7.9 KiB still used by fresh stages, above max_size 0 B")
    assert pipe.run("f").executed == []


def test_keep_never_removes_a_fresh_stages_older_result(store_dir):
    define_variants()
    pipe = Pipeline(store_dir)  # n=0 current
    run_variants(pipe, [0, 1])  # n=1 is the newest
    report = pipe.gc(keep=1, grace=0)
    assert set(by_n(pipe.store)) == {0, 1} and report.records == 0
    assert pipe.run("f").executed == []


def test_a_result_of_a_stage_known_only_from_the_store_is_protected_while_shown_fresh(
        store_dir, clock):
    define_variants()
    run_variants(Pipeline(store_dir), [0, 1])  # n=1 is the newest: what the store shows
    cli_like = Pipeline(store_dir, registry=Registry())  # f is not defined here
    assert [s.state for s in cli_like.status()] == ["fresh"]
    clock.at(30 * DAY)
    report = cli_like.gc(keep=5, max_size=0, grace=0)
    assert set(by_n(cli_like.store)) == {1} and report.least_used == 1


def test_an_object_shared_by_two_records_is_counted_once_and_kept_while_named(store_dir, clock):
    @stage(outputs="a_out")
    def a():
        return np.arange(1000)

    @stage(outputs="b_out")
    def b():
        return np.arange(1000)  # the same bytes: one object, named by two records

    @stage(outputs="c_out")
    def c():
        return np.arange(1000) * 2

    pipe = Pipeline(store_dir)
    pipe.run()
    store = pipe.store
    recs = {s: store.latest(s) for s in "abc"}
    shared = recs["a"].outputs["a_out"]
    assert shared.rel == recs["b"].outputs["b_out"].rel
    size = shared.size
    clock.at(4 * DAY)
    for days, name in ((1, "a"), (2, "c"), (3, "b")):
        store.mark_used(name, recs[name].fingerprint, when=clock.start + days * DAY)
    # unprotected (Store.gc protects nothing unless told): 2 objects, the shared one once
    assert store.gc(keep=5, max_size=2 * size, grace=0).records == 0
    report = store.gc(keep=5, max_size=size, grace=0)
    # a, the least recently used, goes first but frees nothing while b names its object,
    # so it stays; c goes
    assert store.stages() == ["a", "b"] and store.records_of("c") == []
    assert report.least_used == 1 and report.objects == 1
    assert store.object_exists(shared)
    assert list(store.load_value(shared, record=recs["a"])) == list(range(1000))


def test_gc_rejects_bad_sizes_and_ages_before_doing_anything(store_dir):
    from pipelite import InvalidArgumentError

    define_variants()
    pipe = Pipeline(store_dir)
    run_variants(pipe, [0, 1])
    with pytest.raises(InvalidArgumentError, match="max_size='lots' is not a size"):
        pipe.gc(max_size="lots")
    with pytest.raises(InvalidArgumentError, match="max_age='soon' is not a duration"):
        pipe.gc(max_age="soon")
    assert len(by_n(pipe.store)) == 2


# -- the command line and the magic -----------------------------------------------------------
def test_cli_gc_takes_max_size_and_max_age(store_dir, clock, capsys):
    from pipelite import REGISTRY

    define_variants()
    run_variants(Pipeline(store_dir), [0, 1])
    REGISTRY.clear()  # the command line: every stage known from the store only
    clock.at(30 * DAY)
    assert main(["--store", str(store_dir), "gc", "--keep", "5", "--max-age", "1d",
                 "--max-size", "0"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 record(s)" in out and "1 unused for over 24 h (max_age)" in out
    assert "still used by fresh stages, above max_size 0 B" in out
    assert len(Store(store_dir).records_of("f")) == 1


@pytest.mark.parametrize("flag, value, message", [
    ("--max-size", "lots", "max_size='lots' is not a size"),
    ("--max-age", "soon", "max_age='soon' is not a duration"),
    ("--max-age", "0", "max_age='0' is not a duration"),
])
def test_cli_gc_says_what_is_wrong_with_a_bad_value(store_dir, capsys, flag, value, message):
    define_variants()
    Pipeline(store_dir).run()
    assert main(["--store", str(store_dir), "gc", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipelite: error: ") and message in err and "Traceback" not in err


def _cell(ip, source: str):
    with capture_output() as cap:
        result = ip.run_cell(textwrap.dedent(source))
    return result, cap


def test_the_magic_gc_takes_max_size_and_max_age(ip, clock):
    for value in (1, 2):  # two results of the cell; the second is the fresh one
        result, _ = _cell(ip, f"N = {value}")
        result, _ = _cell(ip, "%%stage counted\nimport numpy as np\nbig = np.full(1000, N)\n")
        assert result.success
    clock.at(30 * DAY)
    result, cap = _cell(ip, "%pipelite gc --keep 5 --max-size 0 --max-age 1h")
    assert result.success, cap.stdout
    assert cap.stdout.startswith("[pipelite] gc: removed 1 record(s)")
    assert "still used by fresh stages, above max_size 0 B" in cap.stdout
    assert _cell(ip, "%pipelite run counted")[1].stdout.startswith("[pipelite] ran 0 stage(s)")


@pytest.mark.parametrize("line, message", [
    ("%pipelite gc --max-size lots", "%pipelite gc: max_size='lots' is not a size"),
    ("%pipelite gc --max-age soon", "%pipelite gc: max_age='soon' is not a duration"),
    ("%pipelite gc --max-size", "argument --max-size: expected one argument"),
])
def test_the_magic_gc_gives_a_usage_message_for_a_bad_value(ip, line, message):
    result, cap = _cell(ip, line)
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    assert "Traceback" not in cap.stdout + cap.stderr


# -- a read-only store, and stamps that cannot be written --------------------------------------
def test_loading_works_when_the_use_stamp_cannot_be_written(store_dir, clock):
    define_variants()
    pipe = Pipeline(store_dir)
    pipe.run("f")
    (store_dir / "used").write_text("a file where the stamps' folder would be")
    clock.at(DAY)
    assert list(pipe.load("v")) == [0] * 1000
    assert pipe.run("f").executed == []
    assert (store_dir / "used").read_text() == "a file where the stamps' folder would be"


@pytest.fixture
def read_only_store(tmp_path):
    """A store with one result of ``f`` on a small tmpfs, then remounted read-only."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        define_variants()
        Pipeline(mnt / "store").run("f")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt / "store"
    finally:
        import gc

        gc.collect()  # memory maps of loaded arrays keep the mount busy
        if subprocess.run(["umount", str(mnt)]).returncode:
            subprocess.run(["umount", "-l", str(mnt)])


def test_a_read_only_store_still_loads_and_reuses_results(read_only_store, clock):
    clock.at(DAY)
    pipe = Pipeline(read_only_store)
    assert list(pipe.load("v")) == [0] * 1000
    assert pipe.run("f").executed == []
    assert not (read_only_store / "used").exists()


# -- hostile stamps -----------------------------------------------------------------------------
@pytest.fixture
def decoys(tmp_path):
    """Files outside the store, each holding a stamp of now: none may be read as one, written
    or deleted."""
    folder = tmp_path / "decoys"
    folder.mkdir()
    text = _retention.stamp_bytes(time.time() + 9 * DAY)
    for name in ("stamp", "inner"):
        (folder / name).write_bytes(text)
    return folder, text


def untouched(decoys) -> bool:
    folder, text = decoys
    return all((folder / n).read_bytes() == text for n in ("stamp", "inner"))


def test_hostile_use_stamps_count_as_unknown_and_nothing_outside_is_touched(store_dir, clock,
                                                                           decoys):
    names = ["linked", "garbage", "huge", "future", "fine"]

    def value():
        return np.arange(10)

    for name in names:
        stage(name=name, outputs=f"{name}_out")(value)
    pipe = Pipeline(store_dir)
    pipe.run()
    store = pipe.store
    fps = {n: store.latest(n).fingerprint for n in names}
    clock.at(10 * DAY)
    used = store_dir / "used"
    for n in names:
        (used / n).mkdir(parents=True)
    (used / "linked" / fps["linked"]).symlink_to(decoys[0] / "stamp")
    (used / "garbage" / fps["garbage"]).write_text("yesterday, probably")
    # a stamp of now, padded far past the limit: never read, so never taken for a stamp
    (used / "huge" / fps["huge"]).write_bytes(
        _retention.stamp_bytes(clock.now) + b" " * (STAMP_LIMIT * 1000))
    (used / "future" / fps["future"]).write_text(f"{clock.now + 400 * DAY:.0f}")
    store.mark_used("fine", fps["fine"], when=clock.now - DAY)
    not_ours = used / "fine" / "notes.txt"
    not_ours.write_text("not a fingerprint: not PipeLite's")
    report = store.gc(keep=5, max_age="5d", grace=0)
    # every unreadable stamp is no stamp: used when its run ended, 10 days ago
    assert sorted(store.stages()) == ["fine"] and report.unused == 4
    assert untouched(decoys) and not_ours.exists()
    assert not (used / "linked" / fps["linked"]).is_symlink()  # the link went, its target stayed


def test_a_symlinked_used_folder_is_neither_read_nor_written(store_dir, clock, decoys):
    define_variants()
    pipe = Pipeline(store_dir)
    pipe.run("f")
    (fp,) = by_n(pipe.store).values()
    folder, _ = decoys
    (folder / "f").mkdir()
    (folder / "f" / fp).write_bytes((folder / "stamp").read_bytes())  # a stamp of "recent"
    (store_dir / "used").symlink_to(folder)
    clock.at(10 * DAY)
    assert list(pipe.load("v")) == [0] * 1000  # its stamp goes nowhere
    assert (folder / "f" / fp).read_bytes() == (folder / "stamp").read_bytes()
    report = pipe.store.gc(max_age="5d", grace=0)  # Store.gc: nothing protected
    assert report.unused == 1 and untouched(decoys)
    assert (folder / "f" / fp).exists() and sorted(p.name for p in folder.iterdir()) == \
        ["f", "inner", "stamp"]


def test_a_stamp_is_never_written_for_a_name_that_is_not_a_stage_and_fingerprint(store_dir):
    store = Store(store_dir)
    for stage_name, fp in (("../../x", "0" * 32), ("ok", "../../../x"), ("ok", "ABC")):
        store.mark_used(stage_name, fp)  # refused quietly: a hint is never worth an error
    assert not (store_dir / "used").exists()


def test_gc_removes_stamps_of_results_that_are_gone_once_old(store_dir):
    define_variants()
    pipe = Pipeline(store_dir)
    pipe.run("f")
    (fp,) = by_n(pipe.store).values()
    pipe.store.mark_used("f", fp)
    pipe.invalidate("f")
    stamp = store_dir / "used" / "f" / fp
    pipe.gc()
    assert stamp.exists()  # younger than the grace period
    pipe.gc(grace=0)
    assert not stamp.exists()


# -- the store's .gitignore ---------------------------------------------------------------------
def test_a_new_store_gets_a_gitignore_of_everything(store_dir):
    define_variants()
    pipe = Pipeline(store_dir)
    pipe.run("f")
    lines = (store_dir / ".gitignore").read_text().splitlines()
    assert "*" in lines
    # not a stage, not an object: listing, verify and gc leave it alone
    assert pipe.store.stages() == ["f"] and pipe.store.scrub().ok
    pipe.gc(max_size=0, grace=0)
    assert (store_dir / ".gitignore").read_text().splitlines() == lines


def test_an_existing_store_without_a_gitignore_is_left_alone(store_dir):
    store_dir.mkdir()
    define_variants()
    Pipeline(store_dir).run("f")
    assert not (store_dir / ".gitignore").exists()


def test_a_store_made_by_checking_its_location_gets_the_gitignore(tmp_path):
    Store.check_writable(str(tmp_path / "new" / "store"))
    assert [p.name for p in (tmp_path / "new" / "store").iterdir()] == [".gitignore"]
    assert "*" in (tmp_path / "new" / "store" / ".gitignore").read_text().splitlines()


def test_git_status_shows_nothing_of_the_store(tmp_path, monkeypatch):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    project = tmp_path / "project"
    project.mkdir()
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run([git, "init", "-q", str(project)], check=True, env=env)
    (project / "analysis.py").write_text("print('hi')\n")
    define_variants()
    Pipeline(project / ".pipelite").run("f")
    done = subprocess.run([git, "status", "--porcelain", "--untracked-files=all"],
                          cwd=project, capture_output=True, text=True, check=True, env=env)
    assert done.stdout.splitlines() == ["?? analysis.py"]


def test_a_new_remote_store_gets_the_gitignore_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url = f"memory://pipelite-test-{uuid.uuid4().hex}"
    fs, root = fsspec.core.url_to_fs(url)
    try:
        define_variants()
        pipe = Pipeline(url)
        pipe.run("f")
        assert b"*" in fs.cat_file(f"{root}/.gitignore").splitlines()
        assert pipe.store.stages() == ["f"] and pipe.store.scrub().ok
        fs.rm_file(f"{root}/.gitignore")
        Pipeline(url).run("f")  # an existing store: left as it is
        assert not fs.exists(f"{root}/.gitignore")
    finally:
        if fs.exists(root):
            fs.rm(root, recursive=True)
