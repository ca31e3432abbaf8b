"""One limit per endpoint (base URL + model), and the AIMD rule that moves it.

`endpoint_limit` names the limit after the endpoint, so every step, replica and
process of a run that calls the same endpoint shares one core `shared_limit`
(concurrency + requests/tokens per minute). `Aimd` halves the limit's concurrency on
a 429 (at most once per cooldown, so a burst of 429s is one signal) and gives one
slot back per window of successes. Nothing here sends requests.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
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
