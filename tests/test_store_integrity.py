"""What a load checks at each verify level, and the full scrub (issue 8, item 5).

Large files (over 2 MiB) are checked on every load by size and 64 sampled blocks; small ones by
their whole hash; ``verify="always"`` and ``pipelite verify`` hash everything.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipelite import CorruptArtifactError, Pipeline, PipeliteError, stage
from pipelite._integrity import BLOCK, _offsets

N = 1_000_000  # 8 MB of float64: a "large" file


def define():
    @stage(outputs="big")
    def make():
        return np.arange(N, dtype=np.float64)

    return make


def the_object(store_dir):
    (obj,) = (store_dir / "objects").rglob("*.npy")
    return obj


def flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def a_gap_offset(size: int) -> int:
    """An offset between two sampled blocks."""
    offs = _offsets(size)
    return offs[10] + BLOCK + (offs[11] - offs[10] - BLOCK) // 2


@pytest.mark.parametrize("where", ["header", "tail", "a sampled block"])
def test_a_same_size_flip_in_a_sampled_block_of_a_large_file_is_caught(store_dir, where):
    define()
    Pipeline(store=str(store_dir)).run("make")
    obj = the_object(store_dir)
    size = obj.stat().st_size
    flip(obj, {"header": 3, "tail": size - 5, "a sampled block": _offsets(size)[20] + 7}[where])
    p = Pipeline(store=str(store_dir))
    with pytest.raises(CorruptArtifactError, match="sampled blocks do not match"):
        p.load("big")
    result = p.run("make")  # recomputed, and the good value comes back
    assert result.executed == ["make"] and result["big"][5] == 5.0


def test_a_flip_between_sampled_blocks_is_caught_by_verify_always_not_by_sampled(store_dir):
    define()
    Pipeline(store=str(store_dir)).run("make")
    obj = the_object(store_dir)
    flip(obj, a_gap_offset(obj.stat().st_size))
    assert Pipeline(store=str(store_dir)).load("big") is not None  # the documented limit
    with pytest.raises(CorruptArtifactError, match="content hash does not match"):
        Pipeline(store=str(store_dir), verify="always").load("big")


def test_verify_never_checks_only_the_size(store_dir):
    @stage(outputs="small")
    def small():
        return np.arange(10.0)

    Pipeline(store=str(store_dir)).run("small")
    flip(the_object(store_dir), 200)
    assert Pipeline(store=str(store_dir), verify="never").load("small") is not None
    with pytest.raises(CorruptArtifactError):
        Pipeline(store=str(store_dir)).load("small")  # sampled: small files hashed whole


def test_an_unknown_verify_level_is_refused_with_the_choices():
    with pytest.raises(PipeliteError, match="'always', 'sampled', 'never'"):
        Pipeline(verify="sometimes")


def test_pipelite_verify_reports_and_quarantines_damage_and_exits_1(store_dir):
    define()
    p = Pipeline(store=str(store_dir))
    p.run("make")
    obj = the_object(store_dir)
    flip(obj, a_gap_offset(obj.stat().st_size))  # what the sampled check cannot see
    done = subprocess.run([sys.executable, "-m", "pipelite.cli", "verify", "--store",
                           str(store_dir)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "1 damaged" in done.stdout and str(obj) in done.stdout
    assert "moved to" in done.stdout and not obj.exists()
    assert len(list((store_dir / "quarantine").iterdir())) == 1
    assert Pipeline(store=str(store_dir)).status()[0].state != "fresh"  # its record dropped
    assert Pipeline(store=str(store_dir)).run("make").executed == ["make"]


def test_pipelite_verify_on_an_intact_store_exits_0(store_dir):
    define()
    Pipeline(store=str(store_dir)).run("make")
    done = subprocess.run([sys.executable, "-m", "pipelite.cli", "verify", "--store",
                           str(store_dir), "--jobs", "2"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "checked 1 object(s)" in done.stdout and "all intact" in done.stdout


def test_the_sample_is_the_same_for_the_same_bytes_and_differs_for_others(tmp_path):
    from pipelite._integrity import sample_digest

    a, b = tmp_path / "a", tmp_path / "b"
    data = bytes(range(256)) * 40_000
    a.write_bytes(data)
    b.write_bytes(data)
    assert sample_digest(str(a), len(data)) == sample_digest(str(b), len(data))
    flip(b, len(data) - 1)
    assert sample_digest(str(a), len(data)) != sample_digest(str(b), len(data))


def rewrite_same_size(path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data and len(old) == len(new)
    path.write_bytes(data.replace(old, new, 1))


@pytest.mark.parametrize("value, ext", [(123456789, ".json"), ({"123456789"}, ".pkl")])
def test_a_small_file_read_once_for_its_hash_and_its_value_is_still_checked(store_dir, value,
                                                                            ext):
    """A small JSON or pickle file is read once, hashed, and loaded from those bytes (issue
    13): a same-size edit that still parses is caught, on a cached run and on load."""
    @stage(outputs="small")
    def small():
        return value

    Pipeline(store=str(store_dir)).run("small")
    (obj,) = (store_dir / "objects").rglob("*" + ext)
    rewrite_same_size(obj, b"123456789", b"987654321")
    with pytest.warns(Warning, match="content hash does not match"):
        result = Pipeline(store=str(store_dir)).run("small")
    assert result.executed == ["small"] and result["small"] == value  # recomputed
    (obj,) = (store_dir / "objects").rglob("*" + ext)
    assert Pipeline(store=str(store_dir)).load("small") == value  # intact again
    rewrite_same_size(obj, b"123456789", b"987654321")
    with pytest.raises(CorruptArtifactError, match="content hash does not match"):
        Pipeline(store=str(store_dir)).load("small")


def test_a_small_file_of_another_size_or_gone_is_caught_before_it_is_parsed(store_dir):
    @stage(outputs="small")
    def small():
        return [1, 2, 3]

    Pipeline(store=str(store_dir)).run("small")
    (obj,) = (store_dir / "objects").rglob("*.json")
    obj.write_bytes(obj.read_bytes() + b" ")  # still the same JSON value
    with pytest.raises(CorruptArtifactError, match="expected"):
        Pipeline(store=str(store_dir)).load("small")
    Pipeline(store=str(store_dir)).run("small")
    (obj,) = (store_dir / "objects").rglob("*.json")
    obj.unlink()
    with pytest.raises(CorruptArtifactError):
        Pipeline(store=str(store_dir)).load("small")


def test_a_small_file_kept_in_memory_is_read_again_after_any_change(store_dir):
    """One pipeline keeps a small verified file's bytes while the file's stamp holds (issue
    13): an in-place edit of the same size, with its modification time put back, still
    changes the stamp (the change time), so the edit is caught on the next cached run."""
    import os

    @stage(outputs="small")
    def small():
        return 123456789

    p = Pipeline(store=str(store_dir))
    p.run("small")
    assert p.run("small")["small"] == 123456789  # a hit: now kept in memory
    (obj,) = (store_dir / "objects").rglob("*.json")
    st = obj.stat()
    rewrite_same_size(obj, b"123456789", b"987654321")
    os.utime(obj, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old modification time
    with pytest.warns(Warning, match="content hash does not match"):
        result = p.run("small")
    assert result.executed == ["small"] and result["small"] == 123456789


def test_verify_true_hashes_the_file_again_even_when_it_is_kept_in_memory(store_dir,
                                                                          monkeypatch):
    """``load(verify=True)`` and ``verify="always"`` mean "hash the file now": the memory of a
    verified file is not enough, even if the filesystem could not tell that the file changed."""
    @stage(outputs="small")
    def small():
        return 123456789

    p = Pipeline(store=str(store_dir))
    p.run("small")
    monkeypatch.setattr(p.store._fs, "stamp", lambda rel: ("a filesystem that cannot tell",))
    assert p.load("small") == 123456789
    (obj,) = (store_dir / "objects").rglob("*.json")
    rewrite_same_size(obj, b"123456789", b"987654321")
    assert p.load("small") == 123456789  # the verified bytes kept while the stamp holds
    with pytest.raises(CorruptArtifactError, match="content hash does not match"):
        p.load("small", verify=True)
    p.run("small")  # stored again (the damaged file was moved aside)
    assert p.load("small") == 123456789
    (obj,) = (store_dir / "objects").rglob("*.json")
    rewrite_same_size(obj, b"123456789", b"987654321")
    assert p.load("small") == 123456789
    p.store.verify_level = "always"  # as Pipeline(verify="always") sets it
    with pytest.raises(CorruptArtifactError, match="content hash does not match"):
        p.load("small")


def test_a_loaded_value_that_can_be_changed_in_place_is_never_shared_between_loads(store_dir):
    """Scalars loaded from the same verified bytes may be handed out again; a list, a dict or
    a set is a new object on every load, so changing one cannot change the next."""
    @stage(outputs=["numbers", "count"])
    def small():
        return {"numbers": [1, 2, 3], "count": 3}

    p = Pipeline(store=str(store_dir))
    p.run("small")
    first = p.run("small")
    first["numbers"].append(4)
    again = p.run("small")
    assert again["numbers"] == [1, 2, 3] and again["numbers"] is not first["numbers"]
    assert p.load("numbers") == [1, 2, 3] and p.load("count") == 3


def test_small_files_kept_in_memory_stay_within_their_bound_and_their_count_is_right(
        store_dir, monkeypatch):
    """The memory of small files keeps the newest within its bound (the README's 32 MiB, here
    made small), and its byte count stays exact through hits, misses and damaged files."""
    import pipelite.store

    monkeypatch.setattr(pipelite.store, "SMALL_CACHE_BYTES", 40)

    @stage(outputs=["a", "b", "c"])
    def three():
        return {"a": "x" * 15, "b": "y" * 15, "c": "z" * 15}  # 17 bytes of JSON each

    p = Pipeline(store=str(store_dir))
    p.run("three")
    for name in ("a", "b", "c", "a"):
        assert p.load(name)[0] in "xyz"
    kept = p.store._small
    assert p.store._small_bytes == sum(len(d) for _, d in kept.values()) <= 40
    assert len(kept) == 2  # the oldest went
    (obj,) = [o for o in (store_dir / "objects").rglob("*.json")
              if o.read_bytes() == b'"' + b"x" * 15 + b'"']
    obj.write_bytes(b'"' + b"w" * 15 + b'"')  # damaged in place: read again, found, dropped
    with pytest.raises(CorruptArtifactError):
        p.load("a")
    assert p.store._small_bytes == sum(len(d) for _, d in p.store._small.values())
