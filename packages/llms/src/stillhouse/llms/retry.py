"""The one retry policy of LLM calls: what is transient, and how long to wait.

The `openai` client's own retries are off, so every attempt goes through here and is
counted and logged once. Transient: 429, 408, 409, 5xx, timeouts and connection
errors; a `Retry-After` (or `retry-after-ms`) header wins over the computed backoff.
Everything else (400, 401, 403, 404, 422, a reply that does not fit the schema)
will not go away by asking again and is not retried. Nothing here sends requests.
"""

from __future__ import annotations

import email.utils
import random
import time
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
        parsed = email.utils.parsedate_to_datetime(value)
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, capped; `Retry-After` honoured.

    Attributes:
        max_retries: retries after the first attempt (so `max_retries + 1` attempts).
        base: the first backoff in seconds.
        cap: the longest backoff in seconds.
    """

    max_retries: int = 6
    base: float = 0.5
    cap: float = 30.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        rng = rng or random
        if retry_after is not None:
            # The server said when: wait that long, plus a little jitter so that many
            # callers told the same thing do not come back in one burst.
            return retry_after + rng.uniform(0, min(retry_after, 1.0) * 0.1)
        ceiling = min(self.cap, self.base * (2 ** (retry - 1)))
        return rng.uniform(ceiling / 2, ceiling)
