"""Fixtures for the executor tests: each executor made here is always shut down."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stillhouse.core.engine import Executor
from stillhouse.executors import MultiprocessingExecutor, SyncExecutor, ThreadedExecutor

HERE = Path(__file__).resolve().parent

# Workers started with spawn or forkserver get this process's sys.path and import the
# test steps by module name, so `executor_testkit` must be importable from it.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

EXECUTORS: dict[str, type[Executor]] = {
    "mp": MultiprocessingExecutor,
    "threaded": ThreadedExecutor,
    "sync": SyncExecutor,
}


@pytest.fixture
def make_executor() -> Iterator[Callable[..., Executor]]:
    """`make_executor("mp", start_method="spawn")`; force-shut down after the test."""
    made: list[Executor] = []

    def make(kind: str, **options: object) -> Executor:
        executor = EXECUTORS[kind](**options)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.shutdown(force=True)


@pytest.fixture(params=sorted(EXECUTORS))
def executor(request: pytest.FixtureRequest, make_executor: Callable[..., Executor]) -> Executor:
    """Each built-in executor in turn ("mp" with its default start method)."""
    return make_executor(request.param)
