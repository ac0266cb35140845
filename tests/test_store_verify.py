"""load(verify=True) on a remote (fsspec) store hashes the local copy it actually loads."""
from __future__ import annotations

import os
import uuid

import fsspec
import numpy as np
import pytest

from pipelite import CorruptArtifactError, Pipeline, stage


@pytest.fixture
def remote():
    url = f"memory://verify-{uuid.uuid4().hex}"
    yield Pipeline(store=url)
    fsspec.filesystem("memory").rm(url.split("://", 1)[1], recursive=True)


def _flip(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        data = f.read(8)
        f.seek(-8, os.SEEK_END)
        f.write(bytes(b ^ 0xFF for b in data))


def _big_array_stage():
    @stage(outputs="big")
    def make_big():
        return np.arange(400_000, dtype=np.float64)  # 3.2 MB: above the cheap-verify size

    return np.arange(400_000, dtype=np.float64)


def _cached_copy(pipeline: Pipeline, name: str) -> str:
    info = pipeline.record("make_big").outputs[name]
    cached = os.path.join(pipeline.store._fs._cache, info.path)
    assert os.path.exists(cached)
    return cached


def test_verify_rehashes_the_local_copy_of_a_remote_object(remote):
    expected = _big_array_stage()
    remote.run("make_big")
    np.testing.assert_array_equal(remote.load("big"), expected)  # fills the local cache
    _flip(_cached_copy(remote, "big"))
    np.testing.assert_array_equal(remote.load("big", verify=True), expected)  # refetched
    np.testing.assert_array_equal(remote.load("big"), expected)  # the cache is good again


def test_a_small_corrupt_local_copy_of_a_remote_object_is_refetched_without_asking(remote):
    @stage(outputs="small")
    def make_small():
        return np.arange(100, dtype=np.int64)

    remote.run("make_small")
    info = remote.record("make_small").outputs["small"]
    cached = os.path.join(remote.store._fs._cache, info.path)
    _flip(cached)
    np.testing.assert_array_equal(remote.load("small"), np.arange(100))


def test_verify_raises_naming_the_file_when_the_remote_object_is_corrupt_too(remote):
    _big_array_stage()
    remote.run("make_big")
    cached = _cached_copy(remote, "big")
    info = remote.record("make_big").outputs["big"]
    _flip(cached)
    fs = fsspec.filesystem("memory")
    remote_path = remote.store.object_path(info)
    data = bytearray(fs.cat_file(remote_path))
    data[-1] ^= 0xFF  # same size: only the hash can tell
    fs.pipe_file(remote_path, bytes(data))
    with pytest.raises(CorruptArtifactError, match=info.hash):
        remote.load("big", verify=True)
