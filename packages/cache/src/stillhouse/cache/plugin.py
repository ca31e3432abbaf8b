"""stillhouse-cache's hooks: it provides the run store."""

from __future__ import annotations

from typing import Any

from stillhouse.cache.run_store import FileRunStore
from stillhouse.core.hookspecs import hookimpl


@hookimpl
def stillhouse_make_run_store(pipeline: Any, use_cache: bool, fresh_steps: set[str]) -> FileRunStore:
    return FileRunStore(pipeline, use_cache=use_cache, fresh_steps=fresh_steps)
