"""Fixtures for inference tests: the random-weight test models, each loaded once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from inference.models.loading import LoadedModel, load_model

LoadTestModel = Callable[[str], LoadedModel]


@pytest.fixture(scope="session")
def load_test_model(model_cache_dir: Path) -> LoadTestModel:
    """Load a built-in test model (built and saved on first use), the same object for every test."""
    loaded: dict[str, LoadedModel] = {}

    def load(name: str) -> LoadedModel:
        if name not in loaded:
            loaded[name] = load_model(name, cache_dir=model_cache_dir)
        return loaded[name]

    return load
