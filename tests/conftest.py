"""Shared fixtures: a clean stage registry and a temporary store for every test."""
from __future__ import annotations

import pytest

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
