"""A store is code: records are signed, and what could run code loads only from signed ones
(issue 8, item 6)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from pipelite import Pipeline, UntrustedRecordError, _trust, stage


@pytest.fixture
def as_user(monkeypatch):
    """Switch the signing key, as another person (or machine) would have another."""
    def switch(name: str) -> None:
        monkeypatch.setenv("PIPELITE_KEY", f"key-of-{name}")
    return switch


def define():
    @stage(outputs="arr")
    def safe():
        return np.arange(3.0)

    @stage(outputs="obj")
    def unsafe():
        return {"a": {1, 2}}  # a set: not JSON, so it is pickled

    @stage(outputs="total")
    def downstream(obj):
        return len(obj["a"])


def test_records_are_signed_and_what_you_wrote_loads(store_dir):
    define()
    p = Pipeline(store=str(store_dir))
    p.run()
    assert _trust.is_signed(p.record("unsafe").to_json())
    assert p.load("obj") == {"a": {1, 2}}


def test_another_keys_pickle_is_refused_but_its_safe_formats_load(store_dir, as_user):
    define()
    as_user("alice")
    Pipeline(store=str(store_dir)).run()
    as_user("bob")
    p = Pipeline(store=str(store_dir))
    assert list(p.load("arr")) == [0, 1, 2]  # npy: data only
    with pytest.raises(UntrustedRecordError, match="pipelite trust"):
        p.load("obj")


def test_a_downstream_run_refuses_an_untrusted_pickled_input(store_dir, as_user):
    define()
    as_user("alice")
    Pipeline(store=str(store_dir)).run(["unsafe"])
    as_user("bob")
    with pytest.raises(UntrustedRecordError, match="not signed with your key"):
        Pipeline(store=str(store_dir)).run("downstream")


def test_pipelite_trust_signs_the_store_with_your_key(store_dir, as_user):
    define()
    as_user("alice")
    Pipeline(store=str(store_dir)).run()
    as_user("bob")
    done = subprocess.run([sys.executable, "-m", "pipelite.cli", "trust", str(store_dir)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert "signed 3 record(s)" in done.stdout
    assert Pipeline(store=str(store_dir)).load("obj") == {"a": {1, 2}}


def test_an_edited_record_loses_its_signature(store_dir):
    define()
    Pipeline(store=str(store_dir)).run(["unsafe"])
    (path,) = (store_dir / "records" / "unsafe").glob("*.json")
    rec = json.loads(path.read_text())
    rec["duration"] = rec["duration"] + 1.0
    path.write_text(json.dumps(rec))
    with pytest.raises(UntrustedRecordError):
        Pipeline(store=str(store_dir)).load("obj")


def test_a_pickle_is_hashed_whole_before_it_is_loaded_whatever_the_verify_level(store_dir):
    from pipelite import CorruptArtifactError
    from pipelite._integrity import BLOCK, _offsets

    @stage(outputs="big")
    def big_pickle():
        return [np.zeros(500_000)]  # a list: pickled, about 4 MB

    Pipeline(store=str(store_dir)).run("big_pickle")
    (obj,) = (store_dir / "objects").rglob("*.pkl")
    size = obj.stat().st_size
    offs = _offsets(size)
    gap = offs[30] + BLOCK + 16  # between two sampled blocks: "sampled" would not see it
    with open(obj, "r+b") as f:
        f.seek(gap)
        f.write(b"\x01")
    with pytest.raises(CorruptArtifactError, match="content hash"):
        Pipeline(store=str(store_dir), verify="never").load("big")


def test_the_key_file_is_made_on_first_use_readable_by_you_only(tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELITE_KEY", raising=False)
    monkeypatch.setenv("PIPELITE_KEY_FILE", str(tmp_path / "k" / "signing.key"))
    sig = _trust.signature({"a": 1})
    key = tmp_path / "k" / "signing.key"
    assert key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert _trust.signature({"a": 1}) == sig  # the same key next time
    assert len(key.read_text().strip()) == 64


def test_a_cells_output_from_an_untrusted_record_is_not_replayed(tmp_path, as_user,
                                                                 monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "pipelite")
        as_user("alice")
        shell.run_cell_magic("stage", "shown", 'print("<b>from alice</b>")\nx = 1')
        as_user("bob")
        with capture_output() as cap:
            shell.run_cell_magic("stage", "shown", 'print("<b>from alice</b>")\nx = 1')
        assert "loaded from store" in cap.stdout
        assert "not replaying its stored output" in cap.stdout
        assert "<b>from alice</b>" not in cap.stdout
        assert shell.user_ns["x"] == 1  # the value (JSON) still loads
    finally:
        shell.run_line_magic("unload_ext", "pipelite")
        InteractiveShell.clear_instance()
