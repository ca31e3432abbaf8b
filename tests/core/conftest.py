"""Fixtures of the core tests: they must pass with stillhouse-core alone installed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stillhouse.core.engine import InProcessExecutor
from stillhouse.core.testing import registered_executor


@pytest.fixture
def inprocess() -> Iterator[str]:
    """The name of core's in-process executor, registered for the test: runs need no
    stillhouse-executors."""
    with registered_executor(InProcessExecutor) as name:
        yield name
