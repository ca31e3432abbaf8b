"""One limit per endpoint (base URL + model), and the AIMD rule that moves it.

`endpoint_limit` names the limit after the endpoint, so every step, replica and
process of a run that calls the same endpoint shares one core `shared_limit`
(concurrency + requests/tokens per minute). `Aimd` halves the limit's concurrency
when the endpoint answers 429 to what we send at once, and gives one slot back per
window of successes; it also tells a caller whether a 429 was answered by such a
decrease (so the call's retry is not counted). Nothing here sends requests.
"""

from __future__ import annotations

import itertools
import logging
import threading
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import Any

from stillhouse.core import shared_limit

logger = logging.getLogger("stillhouse.llms.limits")

MAX_PATIENCE = 16
"""After a level of concurrency got 429s more than once in a row, it is tried again
only after up to this many windows of successes at the level below (see `Aimd`)."""


def endpoint_limit_name(base_url: str, model: str) -> str:
    """The limit's name: what a user reads in its warnings (`shared_limit` logs a step's
    other settings by name), so the endpoint's URL without credentials or query, and
    the model."""
    parts = urllib.parse.urlsplit(base_url.rstrip("/"))
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"LLM endpoint {urllib.parse.urlunsplit((parts.scheme, host, parts.path, '', ''))} (model {model!r})"


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


@dataclass(frozen=True)
class Ticket:
    """What one request was sent under (`Aimd.ticket()`, taken once it holds its slot).

    Attributes:
        level: the concurrency this `Aimd` believed in force.
        lowered: how many decreases it had made or seen by then.
    """

    level: int
    lowered: int


class Aimd:
    """Additive increase, multiplicative decrease of a limit's `max_concurrency`.

    A decrease halves the concurrency when more than `threshold` of the last
    `min(window, concurrency)` answers were 429: at 64 in flight that takes 11 429s in
    50 answers (an occasional 429, a hiccup or another tenant, is only retried), at 2
    in flight one. Once per level: 429s to requests sent before a decrease are what
    that decrease answered, not a new signal, so a server that allows far fewer
    requests than we send is found in a few round trips (64 -> 32 -> ... -> its cap),
    not one halving per second. One slot comes back per `current` successes (about
    one per round trip), up to `ceiling`; a level that was refused again right after
    it came back is tried again only after twice as many windows as the last time (up
    to `MAX_PATIENCE`), so a server with a fixed cap sees ever fewer 429s.

    Several holders (steps, replicas, processes) steer one shared limit: each keeps
    its own view (`current`) and reads the shared value when it changes it (a round
    trip to the run's limit server) or gets a 429, and follows a decrease another
    holder made. Successes count against the view, so the hot path costs nothing.

    A caller takes a `ticket()` when it sends, and tells the outcome with it:
    `on_rate_limited(ticket)` and `lowered_since(ticket)` say whether the limit came
    down since the request was sent, i.e. whether that 429 was of our own making and
    has been answered already (the caller then need not count the retry).

    Attributes:
        limit: the shared limit to steer (`max_concurrency`, `set_max_concurrency`).
        ceiling: the configured concurrency; never exceeded.
        current: this holder's view of the limit's concurrency.
        lowered: decreases this holder made or followed.
    """

    def __init__(self, limit: Any, ceiling: int, *, window: int = 50, threshold: float = 0.2) -> None:
        self.limit = limit
        self.ceiling = ceiling
        self.current = ceiling
        self.lowered = 0
        self.window = window
        self.threshold = threshold
        self._recent: deque[bool] = deque(maxlen=window)  # True: a 429
        self._successes = 0
        self._refused_at: int | None = None  # the level the last decrease left
        self._patience = 1  # windows of successes before trying `_refused_at` again
        self._lock = threading.Lock()

    def ticket(self) -> Ticket:
        with self._lock:
            return Ticket(self.current, self.lowered)

    def on_rate_limited(self, ticket: Ticket | None = None) -> bool:
        """A 429 to a request sent under `ticket`. Lowers the limit when 429s are many;
        returns whether the limit is lower now than when the request was sent."""
        with self._lock:
            if ticket is not None and ticket.lowered != self.lowered:
                return True  # sent before a decrease, which answered it already
            if self._follow_shared():
                return True
            self._recent.append(True)
            span = min(self.window, self.current)
            limited = sum(itertools.islice(reversed(self._recent), span))
            if limited <= self.threshold * span:
                return False
            return self._lower()

    def lowered_since(self, ticket: Ticket | None) -> bool:
        """Whether the limit came down (here or, as the shared value says, elsewhere)
        since the request of `ticket` was sent."""
        if ticket is None:
            return False
        with self._lock:
            return ticket.lowered != self.lowered or self._follow_shared()

    def on_success(self, ticket: Ticket | None = None) -> None:
        with self._lock:
            if ticket is not None and ticket.lowered != self.lowered:
                return  # sent at a level since given up: says nothing about this one
            self._recent.append(False)
            self._successes += 1
            window = self.current
            if self._refused_at is not None and self.current + 1 >= self._refused_at:
                window *= self._patience
            if self._successes < window:
                return
            self._successes = 0
            if self._refused_at is not None and self.current >= self._refused_at:
                self._refused_at, self._patience = None, 1  # a full window where it was refused
            if self.current >= self.ceiling:
                return
            shared = self._shared()
            if shared < self.current:  # another holder lowered it: follow
                self._moved_down(shared)
                return
            self.current = min(self.ceiling, shared + 1)
            self.limit.set_max_concurrency(self.current)

    def _shared(self) -> int:
        return int(self.limit.max_concurrency or self.ceiling)

    def _follow_shared(self) -> bool:
        """Take a decrease another holder made (the shared value is below our view)."""
        shared = self._shared()
        if shared >= self.current:
            return False
        self._moved_down(shared)
        return True

    def _lower(self) -> bool:
        target = max(1, self.current // 2)
        if target >= self.current:
            return False  # at 1 already: the 429s are not about our concurrency
        logger.info("Many 429s from the endpoint: concurrency %d -> %d", self.current, target)
        # The same level refused again: wait longer before the next try of it.
        self._patience = min(self._patience * 2, MAX_PATIENCE) if self._refused_at == self.current else 1
        self._refused_at = self.current
        self._moved_down(target)
        self.limit.set_max_concurrency(target)
        return True

    def _moved_down(self, level: int) -> None:
        self.current = level
        self.lowered += 1
        self._successes = 0
        self._recent.clear()
