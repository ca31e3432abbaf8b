"""Fixtures for stillhouse-llms tests: a FakeOpenAIServer per test, real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stillhouse.llms.testing import FakeOpenAIServer

API_KEY = "sk-test-SECRET-0123456789abcdef"
"""A key distinctive enough to grep every file a run wrote for."""


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=API_KEY, retry_after=0.01) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _no_env_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
