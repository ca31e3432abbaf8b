"""One limit per endpoint (base URL + model), and the AIMD rule that moves it.

`endpoint_limit` names the limit after the endpoint, so every step, replica and
process of a run that calls the same endpoint shares one core `shared_limit`
(concurrency + requests/tokens per minute). `Aimd` halves the limit's concurrency
when many recent answers are 429 and gives one slot back per window of successes.
Nothing here sends requests.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from typing import Any

from stillhouse.core import shared_limit

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

    The concurrency is halved when more than `threshold` of the last `window` answers
    were 429 (at most once per `cooldown` seconds, so a burst is one signal): a server
    that is over its capacity answers many 429s, while an occasional 429 (a hiccup,
    another tenant) is only retried. One slot comes back per `current` successes,
    about one per round trip, up to `ceiling`. The shared value is read only when
    backing off (a round trip to the run's limit server); successes count against
    this process's view of it, so the hot path costs nothing.

    Attributes:
        limit: the shared limit to steer (`max_concurrency`, `set_max_concurrency`).
        ceiling: the configured concurrency; never exceeded.
    """

    def __init__(self, limit: Any, ceiling: int, *, cooldown: float = 1.0, window: int = 50,
                 threshold: float = 0.2) -> None:
        self.limit = limit
        self.ceiling = ceiling
        self.current = ceiling
        self.cooldown = cooldown
        self.threshold = threshold
        self._recent: deque[bool] = deque(maxlen=window)  # True: a 429
        self._last_decrease = 0.0
        self._successes = 0
        self._lock = threading.Lock()

    def on_rate_limited(self) -> None:
        with self._lock:
            self._recent.append(True)
            now = time.monotonic()
            limited = sum(self._recent)
            if now - self._last_decrease < self.cooldown or limited <= self.threshold * self._recent.maxlen:
                return
            self._last_decrease = now
            self._successes = 0
            self._recent.clear()
            shared = int(self.limit.max_concurrency or self.ceiling)
            self.current = max(1, shared // 2)
            if self.current != shared:
                logger.info("Many 429s from the endpoint: concurrency %d -> %d", shared, self.current)
                self.limit.set_max_concurrency(self.current)

    def on_success(self) -> None:
        with self._lock:
            self._recent.append(False)
            if self.current >= self.ceiling:
                return
            self._successes += 1
            if self._successes >= self.current:
                self._successes = 0
                self.current += 1
                self.limit.set_max_concurrency(self.current)
