"""stillhouse-cache's hooks: it provides the run store and `stillhouse cache ...` commands."""

from __future__ import annotations

import tempfile
from typing import Any

from stillhouse.cache.batch_storage import FsBatchStorage
from stillhouse.cache.remote import RemoteRunStore
from stillhouse.cache.run_store import FileRunStore
from stillhouse.core.hookspecs import hookimpl


@hookimpl
def stillhouse_make_run_store(pipeline: Any, use_cache: bool, fresh_steps: set[str]) -> FileRunStore | RemoteRunStore:
    root = str(pipeline.cache_dir)
    if "://" in root and not root.startswith("file://"):
        return RemoteRunStore(pipeline, use_cache=use_cache, fresh_steps=fresh_steps)
    return FileRunStore(pipeline, use_cache=use_cache, fresh_steps=fresh_steps)


@hookimpl
def stillhouse_make_batch_storage(pipeline: Any, storage_parameters: dict[str, Any] | None) -> FsBatchStorage:
    parameters = dict(storage_parameters or {})
    url = parameters.pop("path", None)
    owns_url = url is None
    if url is None:
        run_dir = getattr(pipeline, "_run_dir", None)
        local = run_dir and "://" not in str(run_dir)
        # A remote cache is for durability; batch data stays on this machine unless asked.
        url = f"{run_dir}/batch_data" if local else f"{tempfile.gettempdir()}/stillhouse-batch-data"
    return FsBatchStorage(str(url), parameters, owns_url=owns_url)


@hookimpl
def register_cli(subparsers: Any) -> None:
    from stillhouse.cache.cli import register  # the CLI's imports are only paid by the CLI

    register(subparsers)
