"""Rebuilding results from a run's `data/` folder: `create_distiset`.

Each leaf folder holds Parquet files written in row order, whose schemas may
differ (a column None in early files and filled later, or missing from some
rows). They are unified here, once, into one Arrow file per leaf, which is
memory-mapped, so a large result never has to fit in memory. That file is named
after the Parquet files it was made from, so a second `create_distiset` over the
same data reuses it and changed data never does, and a `.check` file beside it
records its rows, size and xxh3 checksum, so a damaged one is rebuilt, never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import xxhash

from stillhouse.core.engine.worker import METADATA_COLUMN
from stillhouse.core.errors import CorruptCacheError, LeafSchemaError
from stillhouse.distiset._storage import (
    HashingWriter,
    PathLike,
    atomic_write,
    file_digest,
    is_local,
    join,
    list_entries,
    public,
    resolve,
    subdirectories,
)
from stillhouse.distiset.distiset import Distiset
from stillhouse.distiset.layout import (
    ARTIFACTS_DIRNAME,
    CHECK_SUFFIX,
    COMPLETE_MARKER,
    FILE_ID_KEY,
    LOG_FILENAME,
    PARQUET_SUFFIX,
    PIPELINE_FILENAME,
    file_order,
    unified_name,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

logger = logging.getLogger("stillhouse.distiset")

# Fields of an fsspec listing entry that change when a file is rewritten; which ones
# exist depends on the filesystem (local, memory, S3, GCS).
_VERSION_FIELDS = ("size", "mtime", "created", "LastModified", "ETag", "md5Hash")


def create_distiset(
    data_dir: PathLike,
    pipeline_path: PathLike | None = None,
    log_filename_path: PathLike | None = None,
    enable_metadata: bool = False,
    dag: Any = None,
) -> Distiset:
    """Rebuild a run's results from its `data/` folder (`<data_dir>/<leaf>/*.parquet`).

    Args:
        data_dir: The folder the output writer filled: a path or an fsspec URL.
        pipeline_path: The `pipeline.yaml` to attach; defaults to the one next to
            `data_dir` (`<data_dir>/../pipeline.yaml`) if there is one.
        log_filename_path: The `pipeline.log` to attach; same default.
        enable_metadata: Keep the `stillhouse_metadata` column.
        dag: The pipeline's DAG: its `leaves` give the configurations and their order.
            Without it, every folder in `data_dir` is a leaf, in name order.

    Returns:
        A `Distiset` with one `DatasetDict` (split `"train"`) per leaf, or a single
        `"default"` entry when there is one leaf.
    """
    return build_distiset(
        data_dir,
        leaves=list(dag.leaves) if dag is not None else None,
        pipeline_path=pipeline_path,
        log_filename_path=log_filename_path,
        enable_metadata=enable_metadata,
    )


def build_distiset(
    data_dir: PathLike,
    *,
    leaves: Sequence[str] | None,
    pipeline_path: PathLike | None = None,
    log_filename_path: PathLike | None = None,
    enable_metadata: bool = False,
    storage_options: dict[str, Any] | None = None,
    deferred: bool = False,
) -> Distiset:
    """`create_distiset` with the knobs the output writer needs (no public contract).

    `deferred`: the leaves are read (and `datasets` imported) on first use of a value
    (`Distiset.deferred`), not now."""
    fs, root = resolve(data_dir, storage_options)
    if leaves is None:
        if not fs.isdir(root):
            raise FileNotFoundError(
                f"No results folder at {os.fspath(data_dir)!r}. `create_distiset` expects the "
                "`data` folder of a run (`<cache dir>/<pipeline name>/<signature>/data`)."
            )
        leaves = subdirectories(fs, root)

    # One leaf is the configuration "default", as in distilabel.
    names = {"default": leaves[0]} if len(leaves) == 1 else {leaf: leaf for leaf in leaves}

    def load() -> dict[str, Any]:
        from datasets import DatasetDict

        loaded = {}
        for name, leaf in names.items():
            dataset = load_leaf(fs, join(root, leaf), leaf=leaf)
            if not enable_metadata and METADATA_COLUMN in dataset.column_names:
                dataset = dataset.remove_columns(METADATA_COLUMN)
            loaded[name] = DatasetDict({"train": dataset})
        return loaded

    distiset = Distiset.deferred(list(names), load)
    if not deferred:
        distiset._materialize()
    distiset.leaf_steps = dict(names)
    run_dir = posixpath.dirname(root)
    distiset.pipeline_path = pipeline_path or _if_exists(fs, join(run_dir, PIPELINE_FILENAME))
    distiset.log_filename_path = log_filename_path or _if_exists(fs, join(run_dir, LOG_FILENAME))
    if fs.isdir(join(run_dir, ARTIFACTS_DIRNAME)):
        distiset.artifacts_path = public(fs, join(run_dir, ARTIFACTS_DIRNAME))
    distiset.storage_options = storage_options
    return distiset


def load_leaf(fs: fsspec.AbstractFileSystem, directory: str, *, leaf: str) -> Dataset:
    """One leaf's rows, in file order, as a memory-mapped `Dataset`."""
    from datasets import Dataset

    if not fs.exists(join(directory, COMPLETE_MARKER)):
        # A leaf writes its first file at 10,000 rows or when it finishes: an interrupted
        # or suspended small one has none, and must not read as a complete, empty result.
        so_far = "Its rows so far are read" if _parquet_entries(fs, directory) else "No rows of it were written, so it reads as empty"
        logger.warning(
            "Leaf %r is incomplete: its run stopped before the step finished. %s; run the "
            "pipeline again to complete it.",
            leaf, so_far,
        )
    path = unified_file(fs, directory, leaf=leaf)
    if path is None:
        return Dataset.from_dict({})
    return Dataset.from_file(path)


def unified_file(fs: fsspec.AbstractFileSystem, directory: str, *, leaf: str) -> str | None:
    """The checked unified Arrow file of a leaf's Parquet files (None: no files).

    A unified file whose size, checksum or row count disagrees with its check file is
    rebuilt; a Parquet file that cannot be read (damaged bytes: the files carry page
    checksums) is a `CorruptCacheError` naming it and the fix."""
    import pyarrow as pa

    entries = _parquet_entries(fs, directory)
    if not entries:
        return None
    metadata = [_read_metadata(fs, e["name"]) for e in entries]
    schemas = [m.schema.to_arrow_schema() for m in metadata]
    rows = sum(m.num_rows for m in metadata)
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive").remove_metadata()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise LeafSchemaError(
            f"The Parquet files of leaf {leaf!r} in {fs.unstrip_protocol(directory)!r} have "
            f"incompatible column types: {exc}. The step produced one column with two types; "
            "convert its values to one type and run the pipeline again."
        ) from exc

    path = _unified_path(fs, directory, leaf, _fingerprint(fs, entries, schemas))
    problem = _check_unified(path, rows)
    if problem is not None:
        if os.path.exists(path):
            logger.warning("The unified file %s of leaf %r %s; rebuilding it.", path, leaf, problem)
            os.unlink(path)
        logger.debug("Unifying %d files of leaf %r into %s.", len(entries), leaf, path)
        local = fsspec.filesystem("file")
        recorded = _recorded_digests(fs, directory)
        digest = xxhash.xxh3_64()  # of the unified file, as it is written
        # Derived data, checked against its check file on every read and rebuilt when they
        # disagree, so neither is fsynced: on ext4 that fsync would also wait for all the
        # run's own writes still on their way to the disk (seconds, for a large run).
        atomic_write(
            local, path, lambda handle: _write_unified(fs, entries, schema, HashingWriter(handle, digest), recorded),
            durable=False,
        )
        check = {"rows": rows, "bytes": os.path.getsize(path), "xxh3": digest.hexdigest()}
        atomic_write(local, path + CHECK_SUFFIX, lambda handle: handle.write(json.dumps(check).encode()), durable=False)
    return path


def _parquet_entries(fs: fsspec.AbstractFileSystem, directory: str) -> list[dict[str, Any]]:
    return sorted(
        (e for e in list_entries(fs, directory) if e["name"].endswith(PARQUET_SUFFIX)),
        key=lambda e: file_order(e["name"]),
    )


def _check_unified(path: str, rows: int) -> str | None:
    """Why the unified file at `path` cannot be used as it is, or None if it can."""
    if not os.path.exists(path):
        return "does not exist"
    try:
        with open(path + CHECK_SUFFIX, "rb") as handle:
            check = json.loads(handle.read())
        if check["rows"] != rows:
            return f"holds {check['rows']} rows, not {rows}"
        if os.path.getsize(path) != check["bytes"]:
            return f"is {os.path.getsize(path)} bytes long, not {check['bytes']}"
        if _digest(path) != check["xxh3"]:
            return "has a wrong checksum"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"has no readable check file ({exc})"
    return None


def _digest(path: str) -> str:
    return file_digest(fsspec.filesystem("file"), path)


def _recorded_digests(fs: fsspec.AbstractFileSystem, directory: str) -> dict[str, str]:
    """The files' checksums the `_COMPLETE` marker recorded, by file name (none without
    a marker: an unfinished leaf, or a damaged marker, which the next run rebuilds)."""
    try:
        recorded = json.loads(fs.cat_file(join(directory, COMPLETE_MARKER))).get("xxh3") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _write_unified(fs, entries: list[dict[str, Any]], schema: pa.Schema, handle, recorded: dict[str, str]) -> None:
    """The leaf's files, one after the other, as one Arrow stream. A file's bytes are
    read on this thread (the only one that touches a result file); they are checked
    and decoded on another while the file before them is written."""
    import pyarrow as pa

    with ThreadPoolExecutor(1, thread_name_prefix="stillhouse-unify") as pool, pa.ipc.new_stream(handle, schema) as stream:
        decoding: Future[pa.Table] | None = None
        for entry in [*entries, None]:
            ahead = None
            if entry is not None:
                path = entry["name"]
                expected = recorded.get(posixpath.basename(path))
                ahead = pool.submit(_decode_table, fs, path, _read_bytes(fs, path), expected)
            if decoding is not None:
                stream.write_table(_conformed(decoding.result(), schema))
            decoding = ahead


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in the unified `schema`."""
    import pyarrow as pa

    table = table.replace_schema_metadata(None)
    # Concatenating after an empty table of the unified schema adds missing
    # columns as nulls and promotes types (null -> string, struct fields, ...).
    table = pa.concat_tables([schema.empty_table(), table], promote_options="permissive")
    if not table.schema.equals(schema):
        # Only when needed: pyarrow 26 corrupts a list<null> column cast to itself.
        table = table.select(schema.names).cast(schema)
    return table


def _unified_path(fs: fsspec.AbstractFileSystem, directory: str, leaf: str, key: str) -> str:
    """Where the unified Arrow file of a leaf goes: hidden beside its Parquet files, so it
    goes when the run's cache goes (and `begin()` of a rerun removes it); in the datasets
    cache when that folder is remote or read-only."""
    if is_local(fs) and os.access(directory, os.W_OK):
        return os.path.join(directory, unified_name(key))
    import datasets

    return os.path.join(datasets.config.HF_DATASETS_CACHE, "stillhouse", f"{leaf}-{key}.arrow")


def _read_metadata(fs: fsspec.AbstractFileSystem, path: str) -> pq.FileMetaData:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as handle:
            return pq.read_metadata(handle)
    except (pa.ArrowException, OSError) as exc:
        raise _damaged(fs, path, exc) from exc


def _read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> pa.Buffer:
    """A result file's bytes, in Arrow's memory (`_arrow_owned`)."""
    try:
        with fs.open(path, "rb") as source:
            return _arrow_owned(source.read())
    except OSError as exc:
        raise _damaged(fs, path, exc) from exc


def _decode_table(fs: fsspec.AbstractFileSystem, path: str, data: pa.Buffer, expected: str | None) -> pa.Table:
    """The table of a result file's bytes, checked against the `expected` xxh3 if given
    and against the pages' checksums."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if expected is not None and xxhash.xxh3_64(data).hexdigest() != expected:
        raise _damaged(fs, path, ValueError("its checksum differs from the one recorded in _COMPLETE"))
    try:
        # ParquetFile, not read_table: read_table goes through pyarrow.dataset, whose
        # thread pools can abort the interpreter at exit (std::terminate, apache/arrow#34314).
        return pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True).read()
    except (pa.ArrowException, OSError) as exc:
        raise _damaged(fs, path, exc) from exc


def _arrow_owned(data: bytes) -> pa.Buffer:
    """A copy of `data` in Arrow's memory, for pyarrow to read on its own threads.

    Given a Python file (or a Python `bytes`), pyarrow reads it on its IO threads and may
    drop its last reference there after `read_table` returned; when that thread waits for
    the GIL as the interpreter finalizes, Python ends it inside a C++ destructor and the
    process aborts at exit ("terminate called without an active exception"). An Arrow
    buffer holds no Python object."""
    import pyarrow as pa

    buffer = pa.allocate_buffer(len(data))
    memoryview(buffer).cast("B")[:] = data
    return buffer


def _damaged(fs: fsspec.AbstractFileSystem, path: str, exc: Exception) -> CorruptCacheError:
    folder = fs.unstrip_protocol(posixpath.dirname(path))
    return CorruptCacheError(
        f"The result file {fs.unstrip_protocol(path)} is damaged ({exc}). Run the pipeline "
        f"again: it rebuilds the results from its checkpoints (or delete {folder}, or run with "
        "use_cache=False to recompute everything)."
    )


def _fingerprint(fs, entries: list[dict[str, Any]], schemas: list[pa.Schema]) -> str:
    parts = []
    for entry, schema in zip(entries, schemas, strict=True):
        version = {k: str(entry[k]) for k in _VERSION_FIELDS if k in entry}
        file_id = (schema.metadata or {}).get(FILE_ID_KEY, b"").decode()
        parts.append([fs.unstrip_protocol(entry["name"]), file_id, version])
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _if_exists(fs: fsspec.AbstractFileSystem, path: str) -> Path | str | None:
    return public(fs, path) if fs.exists(path) else None
