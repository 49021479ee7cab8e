"""Shared fixtures: the local protocol server and configs pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from langgraph.store.memory import InMemoryStore
from support import CODING_MODEL, REASONING_MODEL, config_text, write_config

from modelyard.configs import ModelyardConfig, load_config
from modelyard.nodes import stats as stats_module
from modelyard.testing.server import LocalModelServer


@pytest.fixture
def server() -> Iterator[LocalModelServer]:
    """A local Ollama + OpenAI-compatible server with the two default models."""
    with LocalModelServer([REASONING_MODEL, CODING_MODEL]) as running:
        yield running


@pytest.fixture(params=["ollama", "openai"])
def protocol(request: pytest.FixtureRequest) -> str:
    """Each protocol the local server speaks."""
    return str(request.param)


@pytest.fixture
def server_config(tmp_path: Path, server: LocalModelServer, protocol: str) -> ModelyardConfig:
    """A config whose models talk to the local server over `protocol`."""
    return load_config(write_config(tmp_path, config_text(server.url, protocol=protocol)))


@pytest.fixture(autouse=True)
def fresh_process_store(monkeypatch: pytest.MonkeyPatch) -> InMemoryStore:
    """Each test starts with no model stats in the store graphs without one fall back to."""
    store = InMemoryStore()
    monkeypatch.setattr(stats_module, "PROCESS_STORE", store)
    return store


@pytest.fixture
def stats_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give each test's `modelyard` commands a stats database of their own (MODELYARD_DB)."""
    path = tmp_path / "stats.db"
    monkeypatch.setenv("MODELYARD_DB", str(path))
    return path
