"""stillhouse-cache's hooks: it provides the run store and `stillhouse cache ...` commands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stillhouse.cache.batch_storage import FsBatchStorage
from stillhouse.cache.remote import RemoteRunStore
from stillhouse.cache.run_store import FileRunStore
from stillhouse.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from stillhouse.core.engine.context import RunContext


@hookimpl
def make_run_store(context: RunContext) -> FileRunStore | RemoteRunStore:
    root = context.cache_dir
    if "://" in root and not root.startswith("file://"):
        return RemoteRunStore(context)
    return FileRunStore(context)


@hookimpl
def make_batch_storage(context: RunContext) -> FsBatchStorage:
    parameters = dict(context.storage_parameters or {})
    owns_url = parameters.pop("path", None) is None
    return FsBatchStorage(context.batch_data_url, parameters, owns_url=owns_url)


@hookimpl
def register_cli(subparsers: Any) -> None:
    from stillhouse.cache.cli import register  # the CLI's imports are only paid by the CLI

    register(subparsers)
