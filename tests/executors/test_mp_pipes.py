"""The "mp" transport's pipes: widened to 1 MB where Linux allows it, within a budget."""

from __future__ import annotations

import gc
import sys
import weakref
from multiprocessing import get_context

import pytest

from stillhouse.executors import _mp_worker
from stillhouse.executors._mp_worker import PIPE_BUDGET, PIPE_BYTES, ResultsQueue, widen

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux's")


@pytest.fixture(autouse=True)
def fresh_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queues other tests left alive (until the garbage collector runs) hold the budget."""
    monkeypatch.setattr(_mp_worker, "_widened", weakref.WeakSet())


def _size(queue) -> int:
    import fcntl

    return fcntl.fcntl(queue._reader.fileno(), fcntl.F_GETPIPE_SZ)


def _close(queue) -> None:
    queue.close()
    queue.join_thread()


def test_results_and_task_queues_get_a_1_mb_pipe() -> None:
    ctx = get_context("fork")
    results, tasks = ResultsQueue(ctx=ctx), widen(ctx.Queue())
    try:
        assert _size(results) == PIPE_BYTES
        assert _size(tasks) == PIPE_BYTES
    finally:
        _close(results)
        _close(tasks)


def test_widening_stops_at_the_budget_and_resumes_when_queues_are_gone() -> None:
    ctx = get_context("fork")
    held = [widen(ctx.Queue()) for _ in range(PIPE_BUDGET)]
    extra = widen(ctx.Queue())
    try:
        assert _size(extra) < PIPE_BYTES  # over budget: the default pipe
        freed = held.pop()
        _close(freed)
        del freed
        gc.collect()
        assert len(_mp_worker._widened) == PIPE_BUDGET - 1
        again = widen(ctx.Queue())
        assert _size(again) == PIPE_BYTES
        _close(again)
    finally:
        for queue in [*held, extra]:
            _close(queue)
