"""Log records of users' steps: tagged with step and replica, and sent to pipeline.log.

A step logs with any logger (`logging.getLogger(__name__)`); the records it emits
while `load()`, `process()` or `unload()` runs are tagged (`record.stillhouse_step`,
`record.stillhouse_replica`) and reach the run's handlers (pipeline.log and the
`logging_handlers` given to `run()`) besides wherever the user's own logging
configuration sends them. The root logger of the user's process is never touched:

- In a worker process ("mp", "ray") the worker's root handler sends records to the
  driver; `StepTagFilter` on that handler tags them, and the driver hands them to
  `reemit`, which passes them to the user's loggers as before and, once, to the run.
- In the driver's process ("threaded", "sync") a record factory, installed for the
  run only, tags records made inside a step and hands them to the run's handlers.
  A handler on the root logger would be the usual way; it is avoided because it
  would change what the user's process logs.

Levels are the user's everywhere: a record reaches pipeline.log when the logger's
level lets it through in the user's process (the "mp"/"ray" workers mirror the
driver's levels). `print()` is not captured: it goes to the terminal.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from stillhouse.core.secrets import REDACTED

STEP_ATTRIBUTE = "stillhouse_step"
REPLICA_ATTRIBUTE = "stillhouse_replica"

_current: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "stillhouse_step", default=None
)
_active: list[list[logging.Handler]] = []  # the handlers of each run going on in this process
_installed: tuple[Callable[..., logging.LogRecord], Callable[..., logging.LogRecord]] | None = None
_lock = threading.Lock()

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def in_step(step_name: str, replica: int) -> Iterator[None]:
    """Records made inside belong to this step replica."""
    token = _current.set((step_name, replica))
    try:
        yield
    finally:
        _current.reset(token)


def step_context(method: F) -> F:
    """Decorates a `StepRunner` method: it runs `in_step(self.step.name, self.replica)`."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with in_step(str(self.step.name), self.replica):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _tag(record: logging.LogRecord, default: tuple[str, int] | None = None) -> bool:
    """Tag `record` with the step running in this context (else `default`); True when it
    is a step's."""
    if hasattr(record, STEP_ATTRIBUTE):
        return True
    current = _current.get() or default
    if current is None:
        return False
    setattr(record, STEP_ATTRIBUTE, current[0])
    setattr(record, REPLICA_ATTRIBUTE, current[1])
    return True


class StepTagFilter(logging.Filter):
    """On a worker's handler: tag records made inside a step; lets every record through.

    `default`: the step replica a worker process holds, for records of threads the step
    started itself (they do not inherit the step's context)."""

    def __init__(self, default: tuple[str, int] | None = None) -> None:
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        _tag(record, self.default)
        return True


def _is_ours(record: logging.LogRecord) -> bool:
    return record.name == "stillhouse" or record.name.startswith("stillhouse.")


def _to_run(record: logging.LogRecord) -> None:
    """Hand a user's step record to the run's handlers (stillhouse's own get there anyway)."""
    for handlers in list(_active):
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def reemit(record: logging.LogRecord) -> None:
    """The driver's side of a worker's record: the user's loggers as before, and the run."""
    logging.getLogger(record.name).handle(record)
    if hasattr(record, STEP_ATTRIBUTE) and not _is_ours(record):
        _to_run(record)


_CREDENTIAL_HEADER = re.compile(
    r"(?i)((?:authorization|proxy-authorization|x-amz-security-token|x-api-key|api-key|"
    r"x-goog-api-key|cookie)['\"]?\s*[:=]\s*['\"]?(?:bearer\s+|basic\s+|aws4-hmac-sha256\s+)?)[^'\",\s}]+"
)
"""A credential header as HTTP libraries log it at DEBUG (`'Authorization': 'Bearer sk-...'`,
`X-Amz-Security-Token: ...`): its value is masked."""

_CREDENTIAL_ENV = re.compile(r"(?i)(key|token|secret|passw|credential)")
MIN_MASKED = 6
"""Shorter values are not masked (they would blank out common words)."""


def environment_secrets() -> set[str]:
    """Values of environment variables named like credentials (`OPENAI_API_KEY`,
    `AWS_SESSION_TOKEN`, `HF_TOKEN`): steps read keys from there too."""
    return {value for name, value in os.environ.items() if _CREDENTIAL_ENV.search(name) and len(value) >= MIN_MASKED}


def mask_secrets(text: str, secrets: set[str] | frozenset[str]) -> str:
    """`text` with every value in `secrets` and every credential header's value masked."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_MASKED and secret in text:
            text = text.replace(secret, REDACTED)
    return _CREDENTIAL_HEADER.sub(lambda match: match.group(1) + REDACTED, text)


class StepFormatter(logging.Formatter):
    """pipeline.log's format: `%(stillhouse_tag)s` is `[step rN] ` on a step's records.
    Every line has the values of credential headers masked (a library logging its
    requests at DEBUG: botocore, httpx), and the values in `secrets` too."""

    def __init__(self, fmt: str | None = None, *, secrets: set[str] | frozenset[str] | None = None) -> None:
        super().__init__(fmt)
        self.secrets = frozenset(secrets or ())

    def format(self, record: logging.LogRecord) -> str:
        step = getattr(record, STEP_ATTRIBUTE, None)
        replica = getattr(record, REPLICA_ATTRIBUTE, 0)
        record.stillhouse_tag = f"[{step} r{replica}] " if step is not None else ""
        return mask_secrets(super().format(record), self.secrets)


@contextlib.contextmanager
def routed_to(handlers: list[logging.Handler]) -> Iterator[None]:
    """For one run: step records of any logger also go to `handlers`.

    Runs going on at once in one process (threads) each add their handlers; a step's
    record goes to all of them (which run a step belongs to is not known here). The
    record factory is installed by the first and removed by the last."""
    global _installed
    with _lock:
        _active.append(handlers)
        if _installed is None:
            previous = logging.getLogRecordFactory()
            factory = _factory(previous, os.getpid())
            logging.setLogRecordFactory(factory)
            _installed = (factory, previous)
    try:
        yield
    finally:
        with _lock:
            _active.remove(handlers)
            if not _active and _installed is not None:
                factory, previous = _installed
                if logging.getLogRecordFactory() is factory:  # else someone wrapped ours: keep it
                    logging.setLogRecordFactory(previous)
                _installed = None


def _factory(previous: Callable[..., logging.LogRecord], pid: int) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        # Only in this process: a forked worker inherits the factory, and its records
        # travel to the driver instead. Only while installed: a factory someone wrapped
        # (so left in place after its runs) must not hand records to later runs twice.
        installed = _installed is not None and _installed[0] is factory
        if installed and os.getpid() == pid and _tag(record) and not _is_ours(record):
            _to_run(record)
        return record

    return factory
