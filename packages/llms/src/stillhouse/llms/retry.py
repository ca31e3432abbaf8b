"""The one retry policy of LLM calls: what is transient, and how long to wait.

The `openai` client's own retries are off, so every attempt goes through here and is
counted and logged once. Transient: 429, 408, 409, 5xx, timeouts and connection
errors; the wait is the computed backoff, or the server's `Retry-After` (or
`retry-after-ms`) when it asks for longer: a server that says "again in 50 ms" to every
attempt does not make us spend them all in a second (`exactly` is for a `Retry-After`
the caller knows to be the reset of a spent quota, which the whole limit waits for).
Everything else (400, 401, 403, 404, 422, a reply that does not fit the schema)
will not go away by asking again and is not retried. `quota_wait` reads the
`x-ratelimit-*` headers OpenAI (and vLLM, LiteLLM, Azure) send with every answer,
to say when a spent quota resets. Nothing here sends requests.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

TRANSIENT_STATUS = frozenset({408, 409, 429})


def transient_reason(exc: BaseException) -> str | None:
    """A short reason ("429", "500", "timeout", "connection") if `exc` is worth
    retrying, else None."""
    import openai  # loaded already: the client raised `exc`

    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in TRANSIENT_STATUS or status >= 500:
            return str(status)
    return None


def retry_after_seconds(exc: BaseException) -> float | None:
    """The wait the server asked for (`retry-after-ms`, then `Retry-After` in seconds
    or as an HTTP date), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # neither seconds nor a date ("1s", "soon"): our backoff
        return None
    if parsed.tzinfo is None:  # a date without a zone: HTTP dates are GMT
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return max(parsed.timestamp() - time.time(), 0.0)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

QUOTA_UNITS = ("requests", "tokens")
"""The quotas `x-ratelimit-remaining-<unit>` and `x-ratelimit-reset-<unit>` describe."""


def duration_seconds(text: str) -> float | None:
    """Seconds in a reset header: OpenAI's Go-style durations (`6m0s`, `1.5s`, `20ms`,
    `1h2m3s`) or a bare number of seconds; None if it is neither."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def quota_wait(headers: Mapping[str, str] | None) -> float | None:
    """Seconds until the endpoint's spent quota resets, from an answer's headers: the
    longest `x-ratelimit-reset-<unit>` among the units whose
    `x-ratelimit-remaining-<unit>` is 0. None when no quota is spent (or unsaid)."""
    if headers is None:
        return None
    waits = []
    for unit in QUOTA_UNITS:
        remaining, reset = headers.get(f"x-ratelimit-remaining-{unit}"), headers.get(f"x-ratelimit-reset-{unit}")
        if remaining is None or reset is None:
            continue
        try:
            if float(remaining) > 0:
                continue
        except ValueError:
            continue
        seconds = duration_seconds(reset)
        if seconds:
            waits.append(seconds)
    return max(waits) if waits else None


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter, capped; a longer `Retry-After` honoured.

    Attributes:
        max_retries: retries after the first attempt (so `max_retries + 1` attempts).
        base: the first backoff in seconds.
        cap: the longest backoff in seconds.
    """

    max_retries: int = 6
    base: float = 0.5
    cap: float = 30.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry` (1-based): between half and all of
        `base * 2 ** (retry - 1)` (at most `cap`), or `retry_after` when it is longer."""
        rng = rng or random
        ceiling = min(self.cap, self.base * (2 ** (retry - 1)))
        backoff = rng.uniform(ceiling / 2, ceiling)
        if retry_after is None or retry_after <= backoff:
            return backoff
        return self.exactly(retry_after, rng)

    def exactly(self, retry_after: float, rng: random.Random | None = None) -> float:
        """`retry_after` plus a little jitter, so that many callers told the same thing do
        not come back in one burst."""
        return retry_after + (rng or random).uniform(0, min(retry_after, 1.0) * 0.1)
