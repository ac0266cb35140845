"""Shared fixtures: a clean stage registry and a temporary store for every test."""
from __future__ import annotations

import os
import tempfile

import pytest

# Records are signed with a key (pipelite._trust): the tests', not the machine user's. Kernels
# and workers the tests start inherit it.
os.environ.setdefault("PIPELITE_KEY_FILE", os.path.join(
    tempfile.mkdtemp(prefix="pipelite-test-key-"), "signing.key"))

from pipelite import REGISTRY, Pipeline


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
