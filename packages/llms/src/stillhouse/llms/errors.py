"""The errors stillhouse-llms raises, on core's `StillhouseError` hierarchy.

Messages name the endpoint and never show the API key (`mask` removes it).
"""

from __future__ import annotations

from stillhouse.core.errors import StillhouseError, StopRun


class LLMCallError(StillhouseError, RuntimeError):
    """One LLM call failed for good: not retryable, or still failing after every retry.

    Attributes:
        endpoint: `<base_url> (model <model>)`.
        status: the HTTP status of the last attempt, if there was one.
        reason: why the last attempt failed ("429", "timeout", "400", "schema", ...).
        attempts: how many requests were sent.
    """

    def __init__(self, message: str, *, endpoint: str, status: int | None, reason: str, attempts: int) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status
        self.reason = reason
        self.attempts = attempts

    def __reduce__(self) -> tuple[object, ...]:  # crosses process boundaries intact
        return (_rebuild, (type(self), str(self), self.endpoint, self.status, self.reason, self.attempts))


def _rebuild(cls: type[LLMCallError], message: str, endpoint: str, status: int | None, reason: str, attempts: int) -> LLMCallError:
    return cls(message, endpoint=endpoint, status=status, reason=reason, attempts=attempts)


class LLMAuthenticationError(LLMCallError, StopRun):
    """The endpoint refused the API key (401/403): nothing this run sends can succeed.

    A call that fails this way, and `GET /models` at load, stop the run (core's
    `StopRun`); code that calls the LLM directly can catch it as an `LLMCallError`."""

    def __init__(
        self,
        message: str,
        *,
        step_name: str | None = None,
        endpoint: str = "",
        status: int | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message, endpoint=endpoint, status=status, reason=str(status or "auth"), attempts=attempts)
        self.step_name = step_name

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_auth, (str(self), self.step_name, self.endpoint, self.status, self.attempts))


def _rebuild_auth(message: str, step_name: str | None, endpoint: str, status: int | None, attempts: int) -> LLMAuthenticationError:
    return LLMAuthenticationError(message, step_name=step_name, endpoint=endpoint, status=status, attempts=attempts)


def mask(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by a masked form."""
    if not secret:
        return text
    return text.replace(secret, mask_key(secret))


def mask_key(secret: str | None) -> str:
    """`sk-...1234`-style: enough to tell keys apart, never enough to use one."""
    if not secret:
        return "<none>"
    return f"{secret[:3]}...{secret[-4:]}" if len(secret) >= 12 else "***"
