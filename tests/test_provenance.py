"""Provenance (issue 11): every record says which run made it, who ran it where, from which
git commit, and in which installed environment; ``pipelite log STAGE`` lists a stage's stored
results with what changed between them, and ``Pipeline.load(artifact, version=RUN_ID)`` reads
an older one back. Provenance is never part of the fingerprint.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import pipelite.cli
from pipelite import InvalidArgumentError, Pipeline, stage
from pipelite._execute import git_facts
from pipelite._records import BadRecord
from pipelite._trust import is_signed
from pipelite.store import ResultRecord

OLD_STORE = Path(__file__).parent / "data" / "store-format2"
EPOCHS = 1  # a global the stages below read


def _two():
    @stage(outputs="x")
    def a():
        return EPOCHS * 10

    @stage(outputs="y")
    def b(x):
        return x + 1


def _set_epochs(monkeypatch, value):
    monkeypatch.setattr(sys.modules[__name__], "EPOCHS", value)


def _record_json(store_dir: Path, name: str) -> tuple[Path, dict]:
    (file,) = (store_dir / "records" / name).glob("*.json")
    return file, json.loads(file.read_text())


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=n", *args], cwd=cwd,
                   check=True, capture_output=True)


@pytest.fixture
def outside_git(tmp_path, monkeypatch):
    """The working directory is in no git work tree (git looks no higher than tmp_path)."""
    work = tmp_path / "plain"
    work.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def git_repo(tmp_path, monkeypatch):
    """The working directory is a git work tree with one commit; returns (folder, commit)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    _git(repo, "init", "-q")
    (repo / "tracked.txt").write_text("one\n")
    _git(repo, "add", "tracked.txt")
    _git(repo, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    return repo, head


# -- what a record says ------------------------------------------------------------------
def test_a_record_says_its_run_user_host_and_environment(pipeline, store_dir):
    _two()
    result = pipeline.run("b")
    prov = result.records["b"].provenance
    assert prov is not None
    assert isinstance(prov["run_id"], str) and len(prov["run_id"]) == 32
    int(prov["run_id"], 16)  # a uuid4 hex
    assert isinstance(prov["user"], str) and prov["user"]
    assert isinstance(prov["host"], str) and prov["host"]
    assert isinstance(prov["distributions"], str) and len(prov["distributions"]) == 16
    _, data = _record_json(store_dir, "b")
    assert data["provenance"] == prov  # in the JSON, under "provenance"
    assert is_signed(data)  # the signature covers it
    assert pipeline.store.record("b", data["fingerprint"]).provenance == prov


def test_the_stages_of_one_run_share_its_id_and_another_run_has_another(pipeline):
    _two()
    first = pipeline.run("b")
    ids = {pipeline.store.latest(n).run_id for n in ("a", "b")}
    assert len(ids) == 1 and None not in ids
    second = pipeline.run("b", force=True)
    assert second.records["b"].run_id not in ids
    assert first.records["b"].run_id in ids


def test_an_executor_run_records_the_clients_run_id(store_dir):
    _two()
    with ThreadPoolExecutor(2) as pool:
        Pipeline(store=str(store_dir), executor=pool).run("b")
    store = Pipeline(store=str(store_dir)).store
    ids = {store.latest(n).run_id for n in ("a", "b")}
    assert len(ids) == 1 and None not in ids
    assert store.latest("b").provenance["user"]


def test_a_result_stored_for_the_state_after_its_run_keeps_its_provenance(pipeline):
    seen: list = []

    @stage(outputs="n")
    def grows():
        seen.append(1)  # changes a global it reads: stored again for the state after
        return len(seen)

    with pytest.warns(UserWarning, match="changed what it reads"):
        pipeline.run("grows")
    records = pipeline.store.records_of("grows")
    assert len(records) == 2 and len({r.run_id for r in records}) == 1
    assert records[0].run_id is not None


def test_git_commit_and_dirty_in_a_git_work_tree(git_repo, store_dir):
    repo, head = git_repo
    _two()
    pipe = Pipeline(store=str(store_dir))
    rec = pipe.run("b").records["b"]
    assert rec.provenance["git_commit"] == head
    assert rec.provenance["git_dirty"] is False
    (repo / "untracked.txt").write_text("not tracked: not dirty\n")
    assert git_facts() == {"git_commit": head, "git_dirty": False}
    (repo / "tracked.txt").write_text("two\n")
    rec = pipe.run("b", force=True).records["b"]
    assert rec.provenance["git_commit"] == head and rec.provenance["git_dirty"] is True


def test_no_git_facts_outside_a_git_work_tree(outside_git, store_dir):
    _two()
    rec = Pipeline(store=str(store_dir)).run("b").records["b"]
    assert "git_commit" not in rec.provenance and "git_dirty" not in rec.provenance
    assert git_facts() == {}


def test_no_git_facts_without_git(git_repo, store_dir, monkeypatch):
    monkeypatch.setenv("PATH", "")  # no git to be found
    assert git_facts() == {}


def test_a_run_of_fresh_stages_never_works_out_provenance(pipeline, monkeypatch):
    _two()
    pipeline.run("b")
    import pipelite._execute as execute

    def boom(*args, **kwargs):
        raise AssertionError("provenance worked out for a run that computed nothing")

    monkeypatch.setattr(execute, "run_facts", boom)
    monkeypatch.setattr(execute, "git_facts", boom)
    assert pipeline.run("b")["y"] == 11


# -- never part of the fingerprint --------------------------------------------------------
def test_provenance_is_not_part_of_the_fingerprint(pipeline, git_repo):
    repo, _ = git_repo
    _two()
    first = pipeline.run("b").records["b"]
    assert all(s.state == "fresh" for s in pipeline.status())
    (repo / "tracked.txt").write_text("edited: the work tree is dirty now\n")
    assert all(s.state == "fresh" for s in pipeline.status())
    again = pipeline.run("b", force=True).records["b"]
    assert again.run_id != first.run_id and again.fingerprint == first.fingerprint
    assert "provenance" not in json.dumps(again.parts)
    assert all(s.state == "fresh" for s in pipeline.status())


# -- read back: hostile and old records ----------------------------------------------------
@pytest.mark.parametrize("bad", [["run"], {"run_id": {"nested": "map"}}, {"run_id": ["a"]},
                                 {"n": 3}, "text", 7, {"host": 1.5}])
def test_a_record_with_a_provenance_of_the_wrong_shape_is_refused(pipeline, store_dir, bad):
    _two()
    pipeline.run("a")
    file, data = _record_json(store_dir, "a")
    data["provenance"] = bad
    with pytest.raises(BadRecord, match="its provenance is not a map"):
        ResultRecord.from_json(data, "a", file.stem)
    # in a store: reported as corrupt and ignored (the stage recomputes)
    file.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="its provenance is not a map"):
        assert Pipeline(store=str(store_dir)).status()[0].state == "missing"


def test_a_provenance_of_text_flags_and_nothing_round_trips():
    prov = {"run_id": "ab" * 16, "git_dirty": True, "git_commit": None, "future_key": "x"}
    rec = ResultRecord("a", "0" * 32, "2026-01-01T00:00:00+00:00", 0.1, {}, provenance=prov)
    assert ResultRecord.from_json(rec.to_json(), "a", "0" * 32).provenance == prov
    assert "provenance" not in ResultRecord("a", "0" * 32, "2026-01-01T00:00:00+00:00", 0.1,
                                            {}).to_json()


def test_records_written_before_provenance_still_load(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(OLD_STORE, old)
    pipe = Pipeline(store=str(old))
    for path in sorted((old / "records").glob("*/*.json")):
        data = json.loads(path.read_text())
        assert "provenance" not in data
        rec = pipe.store.record(path.parent.name, path.stem)
        assert rec is not None and rec.provenance is None and rec.run_id is None
        assert rec.to_json() == data
    assert "\nrun: " not in pipe.explain("make_numbers")
    assert pipelite.cli.main(["log", "make_numbers", "--store", str(old)]) == 0


# -- shown ----------------------------------------------------------------------------------
def test_explain_shows_the_run_that_made_the_result(git_repo, store_dir):
    _, head = git_repo
    _two()
    pipe = Pipeline(store=str(store_dir))
    rec = pipe.run("b").records["b"]
    p = rec.provenance
    text = pipe.explain("b")
    assert f"run: {rec.run_id} on {p['user']}@{p['host']}, git {head[:12]}" in text
    assert "(dirty)" not in text


def test_pipelite_log_lists_results_newest_first_with_what_changed(pipeline, store_dir,
                                                                  monkeypatch, capsys):
    _two()
    old = pipeline.run("b").records
    _set_epochs(monkeypatch, 2)
    new = pipeline.run("b").records
    capsys.readouterr()
    assert pipelite.cli.main(["log", "a", "--store", str(store_dir)]) == 0
    out = capsys.readouterr().out
    old_id = pipeline.store.records_of("a")[1].run_id
    new_id = pipeline.store.records_of("a")[0].run_id
    assert old_id == old["b"].run_id and new_id == new["b"].run_id
    assert out.index(new_id) < out.index(old_id)  # newest first
    newer_block, older_block = out.split("\n\n")
    assert "changed:  global 'EPOCHS'" in newer_block
    assert "code" not in newer_block.split("changed:")[1]
    assert "(oldest stored result)" in older_block
    p = new["b"].provenance
    assert f"{p['user']}@{p['host']}" in newer_block
    # b: its input changed, and the option goes before the command too
    assert pipelite.cli.main(["--store", str(store_dir), "log", "b"]) == 0
    assert "changed:  input 'x'" in capsys.readouterr().out


def test_pipelite_log_shows_the_git_commit(git_repo, store_dir, capsys):
    repo, head = git_repo
    _two()
    (repo / "tracked.txt").write_text("dirty\n")
    Pipeline(store=str(store_dir)).run("a")
    assert pipelite.cli.main(["log", "a", "--store", str(store_dir)]) == 0
    assert f"git:      {head} (dirty)" in capsys.readouterr().out


def test_pipelite_log_of_an_unknown_stage_exits_2(pipeline, store_dir, capsys):
    _two()
    pipeline.run("a")
    assert pipelite.cli.main(["log", "nope", "--store", str(store_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipelite: error: ") and "'nope'" in err
    assert len(err.strip().splitlines()) == 1


# -- an older result, by its run id ----------------------------------------------------------
def test_load_a_version_gives_the_older_value_by_id_and_prefix(pipeline, monkeypatch):
    _two()
    old_id = pipeline.run("b").records["b"].run_id
    _set_epochs(monkeypatch, 2)
    pipeline.run("b")
    assert pipeline.load("x") == 20 and pipeline.load("y") == 21
    assert pipeline.load("x", version=old_id) == 10
    assert pipeline.load("y", version=old_id[:6]) == 11
    with pytest.raises(InvalidArgumentError) as info:
        pipeline.load("x", version="ffffffffff")
    text = str(info.value)
    assert "no stored result of stage 'a' has run id 'ffffffffff'" in text
    assert old_id in text and text.index(pipeline.store.latest("a").run_id) < text.index(old_id)
    with pytest.raises(InvalidArgumentError, match="at least 6 characters"):
        pipeline.load("x", version=old_id[:3])


def test_load_a_version_lists_at_most_five_runs_newest_first(pipeline):
    @stage(outputs="z")
    def c(*, n=0):
        return n

    for n in range(7):
        pipeline.run("c", params={"c": {"n": n}})
    ids = [r.run_id for r in pipeline.store.records_of("c")]
    assert len(set(ids)) == 7
    with pytest.raises(InvalidArgumentError) as info:
        pipeline.load("z", version="0000000")
    text = str(info.value)
    assert text.endswith(", ".join(ids[:5]) + ", ...")
    assert ids[5] not in text and ids[6] not in text
    assert pipeline.load("z", version=ids[-1]) == 0


def test_distributions_are_named_from_their_folders_or_their_metadata():
    from types import SimpleNamespace

    from pipelite._execute import _distribution, process_facts

    assert _distribution(SimpleNamespace(_path="/site/Foo.Bar-1.2.dist-info")) == "foo_bar==1.2"
    egg = SimpleNamespace(_path="/src/thing.egg-info", metadata={"Name": "The-Thing"},
                          version="0.3")
    assert _distribution(egg) == "the_thing==0.3"
    assert _distribution(SimpleNamespace(metadata={}, version="1")) is None  # broken: skipped
    assert process_facts() is process_facts()  # once per process
