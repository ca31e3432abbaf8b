"""The errors stillhouse-llms raises, on core's `StillhouseError` hierarchy.

Messages name the endpoint and never show the API key (`mask` removes it).
"""

from __future__ import annotations

from stillhouse.core.errors import StepRuntimeError, StillhouseError


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


class LLMAuthenticationError(StepRuntimeError):
    """The endpoint refused the API key (401/403): nothing this run sends can succeed."""


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
