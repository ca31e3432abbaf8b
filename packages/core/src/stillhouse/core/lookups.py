"""One look at the world outside a pipeline per run.

A step whose results depend on something outside it (a dataset's commit on the Hub, the
files of a folder or a bucket) looks it up in `signature_extra()`, and a run asks more
than once before its first batch: validation reads the columns of the data the run will
load, the cache hashes the same lookup into the step's signature. Inside
`one_lookup_each()` (the run's preparation), `lookup_once(key, look)` answers every ask
for `key` with the first answer: a run sends one request per key, and its validation and
its signatures see the same commit even when one lands between them. Outside, it looks
every time, so a later run sees what changed. A lookup that raises is not remembered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

_answers: ContextVar[dict[Hashable, Any] | None] = ContextVar("stillhouse_lookups", default=None)


@contextlib.contextmanager
def one_lookup_each() -> Iterator[None]:
    """Inside, `lookup_once` looks each key up once; nested, the outermost scope counts."""
    if _answers.get() is not None:
        yield
        return
    token = _answers.set({})
    try:
        yield
    finally:
        _answers.reset(token)


def lookup_once(key: Hashable, look: Callable[[], T]) -> T:
    """`look()`, or inside `one_lookup_each()` the answer it gave there for `key`."""
    answers = _answers.get()
    if answers is None:
        return look()
    if key not in answers:
        answers[key] = look()
    return answers[key]
