"""The watch on an async step's event loop, from a thread beside it.

An async step that makes a blocking call inside `async def` (`time.sleep`, a sync HTTP
client, heavy CPU work) holds its replica's event loop: none of its other batches
moves, and the loop cannot run the `asyncio.timeout` that enforces `batch_timeout`.
`LoopWatch` pings the loop every `PERIOD` seconds and, when a ping goes unanswered:

- after `BLOCKED_WARNING` seconds, warns once per blocking episode, naming the step
  and the line the loop is stuck at, with the fix;
- fails every batch in flight that is past its `batch_timeout` (plus `GRACE`, so the
  loop's own timeout goes first when it can) and reports the replica as blocked: the
  executor replaces it, as it replaces a sync replica whose batch timed out.

Each batch is answered once (`track`): by the loop when it ends, or by the watch when
it expired, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("stillhouse.worker")

BLOCKED_WARNING = float(os.environ.get("STILLHOUSE_LOOP_BLOCKED_WARNING", "5"))
"""Seconds an async step's loop may go unanswered before the warning saying where."""
PERIOD = 0.25
"""Seconds between pings of the loop."""
GRACE = 0.5
"""Seconds past `batch_timeout` before the watch fails a batch the loop did not."""
_STACK_FRAMES = 4
_OWN_CODE = str(Path(__file__).resolve().parents[1])  # stillhouse/core: not the user's code


@dataclass
class Pending:
    """A batch in flight on the loop: `answer` is called once, by whoever ends it."""

    task: Any
    started: float  # time.perf_counter(), as the runner's results count it
    on_done: Callable[[Any], None]
    answered: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        """Whether the caller is the one to answer the batch (nobody did before)."""
        with self.lock:
            if self.answered:
                return False
            self.answered = True
            return True

    def answer(self, outcome: Any) -> bool:
        """Hand `outcome` on unless the batch was answered already; whether it was handed."""
        if not self.claim():
            return False
        self.on_done(outcome)
        return True


class LoopWatch:
    """Watches `loop` (run by `thread`) for one replica of step `step_name`.

    `expire(pending)` makes the outcome of a batch past `timeout`; `on_blocked()` is
    called when the watch failed a batch because the loop could not."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        *,
        step_name: str,
        replica: int,
        timeout: float | None,
        expire: Callable[[Pending], Any],
        on_blocked: Callable[[], None],
    ) -> None:
        self.loop, self.thread = loop, thread
        self.step_name, self.replica, self.timeout = step_name, replica, timeout
        self._expire, self._on_blocked = expire, on_blocked
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._given_up = False
        self._watcher = threading.Thread(
            target=contextvars.copy_context().run, args=(self._watch,), daemon=True,
            name=f"stillhouse-{step_name}-{replica}-loop-watch",
        )

    def start(self) -> None:
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()

    def track(self, task: Any, on_done: Callable[[Any], None]) -> Pending:
        """Start watching a batch just handed to the loop; call `answer` on what it gives."""
        pending = Pending(task, time.perf_counter(), on_done)
        with self._lock:
            self._pending[id(pending)] = pending

        def forget(_: Any) -> None:
            with self._lock:
                self._pending.pop(id(pending), None)

        pending.on_done = _then(on_done, forget)
        return pending

    # -- the watching thread --------------------------------------------------------------

    def _watch(self) -> None:
        sent_at: float | None = None  # the unanswered ping's time
        answered = threading.Event()
        warned = False
        while not self._stop.wait(PERIOD):
            if self._given_up and not self._pending:
                return  # the replica was replaced and its last batch answered
            now = time.monotonic()
            if sent_at is None or answered.is_set():
                sent_at, warned, answered = now, False, threading.Event()
                try:
                    self.loop.call_soon_threadsafe(answered.set)
                except RuntimeError:  # the loop is closed: nothing left to watch
                    return
                blocked_for = 0.0
            else:
                blocked_for = now - sent_at
            if blocked_for >= BLOCKED_WARNING and not warned and self._pending:
                warned = True  # a slow load() (sync, on the loop by design) is not reported
                self._warn(blocked_for)
            self._expire_overdue(blocked=blocked_for >= PERIOD)

    def _expire_overdue(self, *, blocked: bool) -> None:
        if self.timeout is None:
            return
        limit = time.perf_counter() - self.timeout - GRACE
        with self._lock:
            overdue = [p for p in self._pending.values() if p.started < limit]
        expired = [p for p in overdue if p.claim()]  # the loop may be answering it now
        if expired and blocked:  # before the answers free slots: no new task for this loop
            self._given_up = True
            self._on_blocked()
        for pending in expired:
            pending.on_done(self._expire(pending))

    def _warn(self, blocked_for: float) -> None:
        meanwhile = (f"its batches fail once past their batch_timeout ({self.timeout} s)"
                     if self.timeout is not None else
                     "set `batch_timeout` on the step to fail such batches")
        logger.warning(
            "Step %r (replica %d) has blocked its event loop for %.0f s: none of its batches "
            "can move while one runs blocking code in `async def`. The loop is at:\n%s"
            "Await instead of blocking: `await asyncio.sleep()` for `time.sleep()`, an async "
            "client for a sync one, `await asyncio.to_thread(f, ...)` for other blocking "
            "calls. Meanwhile, %s.",
            self.step_name, self.replica, blocked_for, _where(self.thread), meanwhile,
        )


def _where(thread: threading.Thread) -> str:
    """The frames `thread` runs below stillhouse's last one: the step's line that blocks
    and what it called (the outermost two and the innermost two of a longer chain)."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "  (the loop's thread has ended)\n"
    stack = traceback.extract_stack(frame)
    own = [i for i, f in enumerate(stack) if f.filename.startswith(_OWN_CODE)]
    below = (stack[own[-1] + 1:] if own else stack) or stack
    if len(below) <= _STACK_FRAMES:
        return "".join(traceback.format_list(below))
    half = _STACK_FRAMES // 2
    return "".join([*traceback.format_list(below[:half]), "  ...\n",
                    *traceback.format_list(below[-half:])])


def _then(first: Callable[[Any], None], second: Callable[[Any], None]) -> Callable[[Any], None]:
    def both(value: Any) -> None:
        try:
            first(value)
        finally:
            second(value)

    return both
