"""One limit per endpoint (base URL + model), and the AIMD rule that moves it.

`endpoint_limit` names the limit after the endpoint, so every step, replica and
process of a run that calls the same endpoint shares one core `shared_limit`
(concurrency + requests/tokens per minute). `Aimd` halves the limit's concurrency on
a 429 (at most once per cooldown, so a burst of 429s is one signal) and gives one
slot back per window of successes. Nothing here sends requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

logger = logging.getLogger("stillhouse.llms.limits")


def endpoint_limit_name(base_url: str, model: str) -> str:
    digest = hashlib.sha256(f"{base_url.rstrip('/')}|{model}".encode()).hexdigest()[:16]
    return f"stillhouse-llms:{digest}"


def endpoint_limit(
    base_url: str,
    model: str,
    max_concurrency: int | None,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
) -> Any:
    """The shared limit of one endpoint for this run (a process-local one outside a run)."""
    try:
        from stillhouse.core import shared_limit
    except ImportError:  # a core without shared limits: limit this process only
        shared_limit = _local_limit

    per_minute: dict[str, float] = {}
    if requests_per_minute:
        per_minute["requests"] = requests_per_minute
    if tokens_per_minute:
        per_minute["tokens"] = tokens_per_minute
    return shared_limit(
        endpoint_limit_name(base_url, model),
        max_concurrency=max_concurrency,
        per_minute=per_minute or None,
    )


class Aimd:
    """Additive increase, multiplicative decrease of a limit's `max_concurrency`.

    Attributes:
        limit: the shared limit to steer (`max_concurrency`, `set_max_concurrency`).
        ceiling: the configured concurrency; never exceeded.
        cooldown: seconds after a decrease during which further 429s do not decrease.
    """

    def __init__(self, limit: Any, ceiling: int, cooldown: float = 1.0) -> None:
        self.limit = limit
        self.ceiling = ceiling
        self.cooldown = cooldown
        self._last_decrease = 0.0
        self._successes = 0
        self._lock = threading.Lock()

    def _current(self) -> int:
        return int(self.limit.max_concurrency or self.ceiling)

    def on_rate_limited(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_decrease < self.cooldown:
                return
            current = self._current()
            lowered = max(1, current // 2)
            self._last_decrease = now
            self._successes = 0
            if lowered != current:
                logger.info("429 from the endpoint: concurrency %d -> %d", current, lowered)
                self.limit.set_max_concurrency(lowered)

    def on_success(self) -> None:
        with self._lock:
            current = self._current()
            if current >= self.ceiling:
                return
            self._successes += 1
            if self._successes >= current:
                self._successes = 0
                self.limit.set_max_concurrency(current + 1)


# -- fallback for a core without `shared_limit` ------------------------------------------

_LOCAL: dict[str, _LocalLimit] = {}
_LOCAL_LOCK = threading.Lock()


def _local_limit(name: str, max_concurrency: int | None = None, per_minute: dict[str, float] | None = None) -> _LocalLimit:
    with _LOCAL_LOCK:
        if name not in _LOCAL:
            _LOCAL[name] = _LocalLimit(max_concurrency, per_minute)
        return _LOCAL[name]


class _LocalLimit:
    """A process-local concurrency + per-minute limit usable from any thread's event
    loop: waiters are woken when a slot frees, never by polling."""

    def __init__(self, max_concurrency: int | None, per_minute: dict[str, float] | None) -> None:
        self.max_concurrency = max_concurrency
        self.per_minute = dict(per_minute or {})
        self._lock = threading.Lock()
        self._in_use = 0
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._spent: dict[str, deque[tuple[float, float]]] = {k: deque() for k in self.per_minute}

    def set_max_concurrency(self, n: int) -> None:
        with self._lock:
            self.max_concurrency = n
            self._wake()

    def _free(self) -> bool:
        return self.max_concurrency is None or self._in_use < self.max_concurrency

    def _wake(self) -> None:
        while self._waiters and self._free():
            loop, future = self._waiters.popleft()
            self._in_use += 1
            loop.call_soon_threadsafe(_grant, future, self)

    def _release(self) -> None:
        with self._lock:
            self._in_use -= 1
            self._wake()

    def _budget_wait(self, costs: dict[str, float]) -> float:
        """Seconds until `costs` fit in every per-minute budget (0: now; spends it)."""
        now = time.monotonic()
        wait = 0.0
        for unit, budget in self.per_minute.items():
            spent = self._spent[unit]
            while spent and now - spent[0][0] >= 60:
                spent.popleft()
            total = sum(c for _, c in spent) + costs.get(unit, 0)
            for stamp, cost in spent:
                if total <= budget:
                    break
                total -= cost
                wait = max(wait, stamp + 60 - now)
        if wait == 0.0:
            for unit in self.per_minute:
                self._spent[unit].append((now, costs.get(unit, 0)))
        return wait

    @contextlib.asynccontextmanager
    async def slot(self, costs: dict[str, float] | None = None) -> AsyncIterator[None]:
        while True:
            with self._lock:
                wait = self._budget_wait(costs or {})
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] | None = None
        with self._lock:
            if self._free() and not self._waiters:
                self._in_use += 1
            else:
                future = loop.create_future()
                self._waiters.append((loop, future))
        if future is not None:
            try:
                await future
            except asyncio.CancelledError:
                with self._lock:
                    if (loop, future) in self._waiters:
                        self._waiters.remove((loop, future))
                        raise
                if not future.cancelled():
                    self._release()  # granted, then cancelled: give the slot back
                raise  # (a cancelled future's slot is given back by `_grant`)
        try:
            yield
        finally:
            self._release()


def _grant(future: asyncio.Future[None], limit: _LocalLimit) -> None:
    if future.cancelled():
        limit._release()
    else:
        future.set_result(None)
