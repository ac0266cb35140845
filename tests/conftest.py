"""Shared fixtures: a clean stage registry and a temporary store for every test."""
from __future__ import annotations

import os
import tempfile

import pytest

# Records are signed with a key (pipelite._trust): the tests', not the machine user's. Kernels
# and workers the tests start inherit it.
os.environ.setdefault("PIPELITE_KEY_FILE", os.path.join(
    tempfile.mkdtemp(prefix="pipelite-test-key-"), "signing.key"))
# the machine's file-hash cache (pipelite._hashcache): the tests', not the user's
os.environ.setdefault("PIPELITE_HASH_CACHE", os.path.join(
    tempfile.mkdtemp(prefix="pipelite-test-hashes-"), "file-hashes.sqlite3"))

from pipelite import REGISTRY, Pipeline, stage


@pytest.fixture(autouse=True)
def clean_registry():
    """Stages register globally (as in a notebook); each test starts with none."""
    REGISTRY.clear()
    yield REGISTRY
    REGISTRY.clear()


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def pipeline(store_dir):
    return Pipeline(store=str(store_dir))


@pytest.fixture
def two_stages():
    """a -> b: artifact x, then y = x + 1."""

    @stage(outputs="x")
    def a():
        return 1

    @stage(outputs="y")
    def b(x):
        return x + 1


@pytest.fixture
def ip(tmp_path, monkeypatch):
    """A real shell with the extension loaded, working in a temporary directory."""
    monkeypatch.chdir(tmp_path)
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.reset(new_session=False)
    shell.run_line_magic("colors", "nocolor")  # tracebacks as plain text, to read them
    shell.run_line_magic("load_ext", "pipelite")
    shell.user_ns["LOG"] = str(tmp_path / "ran.log")
    yield shell
    for mod in ("pipelite", "pipelite_ipy"):
        if mod in shell.extension_manager.loaded:
            shell.run_line_magic("unload_ext", mod)
    shell.config.pop("PipeliteSession", None)


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3 API: a moto server process on 127.0.0.1, started here and stopped by its PID.

    Yields ``(endpoint, storage_options)``; the bucket ``pipelite-test`` exists. Each test uses
    its own prefix in it."""
    import signal
    import subprocess

    from tests.helpers import start_moto

    proc, endpoint = start_moto("pipelite-test")
    try:
        yield endpoint, {"key": "test", "secret": "test",
                         "client_kwargs": {"endpoint_url": endpoint,
                                           "region_name": "us-east-1"}}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def kernel_manager(tmp_path):
    """A real IPython kernel working in the test's folder: (manager, client), stopped after."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
