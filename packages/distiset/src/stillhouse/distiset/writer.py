"""The output writer: streams every leaf step's rows to Parquet files as they arrive.

Layout (`layout.py`): `<data_dir>/<leaf>/00000.parquet, 00001.parquet, ...` in row order (with page
checksums), then a `_COMPLETE` marker once the leaf has produced all its rows: JSON
with the row count, each file's size and xxh3 checksum, and the `version` of the
stored outputs the rows come from, so a later run reuses the files only for the same
outputs, and only undamaged. Files are never
rewritten: a column that is None in early files and filled later is reconciled
when the results are read (`reader.py`), so memory stays bounded by one file's
worth of rows per leaf however long the run. Reading results back does not belong
here.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import posixpath
import shutil
import tempfile
import uuid
import weakref
from array import array as c_array
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import xxhash

from stillhouse.core.engine.protocol import OutputWriter
from stillhouse.core.errors import CorruptCacheError, EngineError, LeafSchemaError
from stillhouse.core.rows import uniform_columns
from stillhouse.core.typing import Row
from stillhouse.distiset._storage import (
    HashingWriter,
    PathLike,
    atomic_write,
    exists,
    file_digest,
    is_local,
    join,
    list_entries,
    make_dirs,
    make_durable,
    resolve,
    start_writeback,
)
from stillhouse.distiset.layout import COMPLETE_MARKER, FILE_ID_KEY, PARQUET_SUFFIX, parquet_name
from stillhouse.distiset.reader import build_distiset

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger("stillhouse.distiset")

DEFAULT_ROWS_PER_FILE = 10_000
# Rows are flushed early past this many bytes so a leaf with huge rows (long texts,
# embeddings, images) cannot hold hundreds of MB waiting for `rows_per_file` rows.
DEFAULT_MAX_BUFFER_BYTES = 32 * 1024 * 1024
BACKGROUND_FROM = 4 * 1024 * 1024
"""Files from this size (Arrow bytes) are written by a background thread."""
MAX_FILES_IN_FLIGHT = 2
"""Files the background thread may have waiting: bounds the memory they hold."""


class _OwnedDir:
    """A temporary folder, removed once nothing holds it (or at exit)."""

    def __init__(self) -> None:
        self.name = tempfile.mkdtemp(prefix="stillhouse-results-")
        weakref.finalize(self, shutil.rmtree, self.name, ignore_errors=True)


@dataclass
class _LeafBuffer:
    tables: list[pa.Table] = field(default_factory=list)
    schema: pa.Schema | None = None  # of every row of the leaf so far, files included
    rows: int = 0
    nbytes: int = 0
    next_file: int = 0
    written_rows: int = 0
    paths: list[str] = field(default_factory=list)  # files not yet fsynced
    sizes: dict[str, int] = field(default_factory=dict)  # every file written: its size
    digests: dict[str, str] = field(default_factory=dict)  # ... and its xxh3 checksum
    version: str = ""  # the stored outputs the rows come from


class ParquetOutputWriter(OutputWriter):
    """Writes leaf rows to `<data_dir>/<leaf>/NNNNN.parquet` and returns a `Distiset`.

    Args:
        data_dir: Where the leaf folders go: a path or an fsspec URL. None makes a
            temporary folder that lives as long as this writer and its result.
        leaves: The leaf step names, in DAG order (the order of the Distiset).
        pipeline_path: The run's `pipeline.yaml`, attached to the Distiset if it exists.
        log_path: The run's `pipeline.log`, likewise.
        enable_metadata: Keep the `stillhouse_metadata` column in the results.
        rows_per_file: Rows per Parquet file.
        max_buffer_bytes: Write buffered rows early once they take this much memory.
        storage_options: fsspec options for a `data_dir` URL.
    """

    def __init__(
        self,
        data_dir: PathLike | None = None,
        leaves: Sequence[str] = (),
        *,
        pipeline_path: PathLike | None = None,
        log_path: PathLike | None = None,
        enable_metadata: bool = False,
        rows_per_file: int = DEFAULT_ROWS_PER_FILE,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file must be at least 1, got {rows_per_file!r}.")
        self._owned_dir: _OwnedDir | None = None
        if data_dir is None:
            self._owned_dir = _OwnedDir()
            data_dir = join(self._owned_dir.name, "data")
        self.data_dir = data_dir
        self.leaves = list(leaves)
        self.pipeline_path = pipeline_path
        self.log_path = log_path
        self.enable_metadata = enable_metadata
        self.rows_per_file = rows_per_file
        self.max_buffer_bytes = max_buffer_bytes
        self.storage_options = storage_options
        self._fs, self._root = resolve(data_dir, storage_options)
        self._buffers: dict[str, _LeafBuffer] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: collections.deque[Future[None]] = collections.deque()

    # -- OutputWriter ---------------------------------------------------------------

    def is_complete(self, leaf: str, version: str = "") -> bool:
        """Marked complete from the stored outputs `version`, and every file is there,
        with the size and xxh3 checksum the marker recorded when it was written.

        Anything else (outputs of another signature, a damaged, missing or extra file)
        makes the engine rebuild the leaf from its checkpoints, so a bad or stale results
        folder is repaired, never returned. Files with the checksums they were written
        with hold the rows they were written with, so nothing is parsed here (no
        `pyarrow` import on a cached rerun); the unified Arrow file `datasets` reads is
        checked, and rebuilt from these files if damaged, when the results are read."""
        directory = self._leaf_dir(leaf)
        marker = join(directory, COMPLETE_MARKER)
        if not self._fs.exists(marker):
            return False
        try:
            summary = json.loads(self._fs.cat_file(marker))
            if summary.get("version", "") != version:
                logger.info("Results of leaf %r were made from other stored outputs; rebuilding them.", leaf)
                return False
            expected = dict(summary["sizes"])
            found = {
                posixpath.basename(e["name"]): e.get("size")
                for e in list_entries(self._fs, directory)
                if e["name"].endswith(PARQUET_SUFFIX)
            }
            if found != expected:
                raise ValueError(f"files {sorted(found)} with sizes {found}, the marker lists {expected}")
            for name in found:
                path = join(directory, name)
                if file_digest(self._fs, path) != summary["xxh3"][name]:
                    raise ValueError(f"{self._fs.unstrip_protocol(path)} has a wrong checksum")
            if not isinstance(summary["rows"], int) or (summary["rows"] > 0) != bool(found):
                raise ValueError(f"{len(found)} files, the marker counts {summary['rows']!r} rows")
        except (ValueError, KeyError, TypeError, AttributeError, OSError, CorruptCacheError) as exc:
            logger.warning(
                "Results of leaf %r in %s are damaged (%s); rebuilding them from the checkpoints.",
                leaf, self._fs.unstrip_protocol(directory), exc,
            )
            return False
        return True

    def begin(self, leaf: str, version: str = "") -> None:
        self._settle()  # no file of an earlier `begin` may land after the cleanup
        directory = self._leaf_dir(leaf)
        marker = join(directory, COMPLETE_MARKER)
        # The marker goes first: a crash half-way through the cleanup must not leave a
        # "complete" leaf with some of its files missing.
        if self._fs.exists(marker):
            self._fs.rm(marker)
        # Hidden entries too: temporary files of an interrupted write.
        for entry in list_entries(self._fs, directory, hidden=True):
            self._fs.rm(entry["name"], recursive=entry.get("type") == "directory")
        make_dirs(self._fs, directory)
        self._buffers[leaf] = _LeafBuffer(version=version)

    def write(self, leaf: str, rows: list[Row]) -> None:
        buffer = self._buffer(leaf)
        if not rows:
            return
        table = rows_to_table(leaf, rows)
        buffer.schema = unify_schema(leaf, buffer.schema, table.schema)
        buffer.tables.append(table)
        buffer.rows += table.num_rows
        buffer.nbytes += table.get_total_buffer_size()  # a new table: its size, and
        # unlike `nbytes` it neither walks the offsets nor frees the GIL (codec.arrow_bytes)
        if buffer.nbytes >= self.max_buffer_bytes:
            self._drain(leaf, buffer, everything=True)
        elif buffer.rows >= self.rows_per_file:
            self._drain(leaf, buffer, everything=False)

    def finish(self, leaf: str) -> None:
        buffer = self._buffer(leaf)
        self._drain(leaf, buffer, everything=True)
        self._settle()
        make_durable(self._fs, buffer.paths)
        summary = {
            "rows": buffer.written_rows,
            "files": buffer.next_file,
            "sizes": buffer.sizes,
            "xxh3": buffer.digests,
            "version": buffer.version,
        }
        payload = json.dumps(summary).encode()
        atomic_write(
            self._fs, join(self._leaf_dir(leaf), COMPLETE_MARKER), lambda f: f.write(payload)
        )
        logger.debug("Leaf %r complete: %d rows in %d files.", leaf, buffer.written_rows, buffer.next_file)

    def flush(self) -> None:
        for leaf, buffer in self._buffers.items():
            self._drain(leaf, buffer, everything=True)
        self._settle()

    def result(self) -> Any:
        """The `Distiset` of everything written so far; its leaves are read on first use."""
        self.flush()
        self.close()
        distiset = build_distiset(
            self.data_dir,
            leaves=self.leaves or None,
            pipeline_path=self._if_exists(self.pipeline_path),
            log_filename_path=self._if_exists(self.log_path),
            enable_metadata=self.enable_metadata,
            storage_options=self.storage_options,
            deferred=True,  # `datasets` is imported, and the files read, on first use
        )
        # The Datasets map files inside the temporary folder: keep it alive with them.
        distiset._owned_dir = self._owned_dir
        return distiset

    # -- internals ------------------------------------------------------------------

    @property
    def buffered_rows(self) -> dict[str, int]:
        """Rows held in memory per leaf, not yet in a file."""
        return {leaf: buffer.rows for leaf, buffer in self._buffers.items()}

    def _if_exists(self, location: PathLike | None) -> PathLike | None:
        # The run store may not have written them (no cache): then there is nothing to attach.
        return location if location is not None and exists(location, self.storage_options) else None

    def _leaf_dir(self, leaf: str) -> str:
        return join(self._root, leaf)

    def _buffer(self, leaf: str) -> _LeafBuffer:
        try:
            return self._buffers[leaf]
        except KeyError:
            raise EngineError(
                f"The output writer got rows for leaf {leaf!r} before `begin({leaf!r})`. "
                f"Leaves begun: {sorted(self._buffers) or 'none'}."
            ) from None

    def _drain(self, leaf: str, buffer: _LeafBuffer, *, everything: bool) -> None:
        """Write files of `rows_per_file` rows (and a last, shorter one if `everything`)."""
        if not buffer.rows:
            return
        import pyarrow as pa

        table = pa.concat_tables(buffer.tables, promote_options="permissive")
        size = self.rows_per_file
        end = table.num_rows if everything else table.num_rows - table.num_rows % size
        for start in range(0, end, size):
            self._write_file(leaf, buffer, table.slice(start, min(size, end - start)))
        rest = table.slice(end)
        buffer.tables = [rest] if rest.num_rows else []
        buffer.rows = rest.num_rows
        buffer.nbytes = rest.nbytes if rest.num_rows else 0

    def _write_file(self, leaf: str, buffer: _LeafBuffer, table: pa.Table) -> None:
        """Write one numbered file. A large one (`BACKGROUND_FROM` bytes) on a local disk
        is written by a background thread (at most `MAX_FILES_IN_FLIGHT` waiting), so
        encoding and writing it, which free the GIL, go on beside the run; `_settle` waits
        for them and raises what failed. Results need no durability before `finish` (an
        unfinished leaf is rebuilt from the checkpoints), so nothing else waits."""
        path = join(self._leaf_dir(leaf), parquet_name(buffer.next_file))
        metadata = {**(table.schema.metadata or {}), FILE_ID_KEY: uuid.uuid4().hex.encode()}
        table = table.replace_schema_metadata(metadata)
        buffer.paths.append(path)
        buffer.next_file += 1
        buffer.written_rows += table.num_rows
        if not is_local(self._fs) or table.nbytes < BACKGROUND_FROM:
            self._write_now(path, table, buffer)  # small: a thread hand-off costs more
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stillhouse-results")
        self._settle(leave=MAX_FILES_IN_FLIGHT - 1)
        self._in_flight.append(self._pool.submit(self._write_now, path, table, buffer))

    def _write_now(self, path: str, table: pa.Table, buffer: _LeafBuffer) -> None:
        # Durable only before the leaf is marked complete: an unfinished leaf is rewritten
        # from the checkpoints on resume anyway, so one fsync per file would buy nothing.
        digest = xxhash.xxh3_64()
        import pyarrow.parquet as pq

        def write(handle: Any) -> None:
            pq.write_table(table, HashingWriter(handle, digest), write_page_checksum=True)

        atomic_write(self._fs, path, write, durable=False)
        start_writeback(self._fs, path)
        buffer.sizes[posixpath.basename(path)] = self._fs.size(path)
        buffer.digests[posixpath.basename(path)] = digest.hexdigest()

    def _settle(self, leave: int = 0) -> None:
        """Wait until at most `leave` files are in flight. A failure is raised once every
        file in flight has ended, so that nothing is still being written behind it."""
        while len(self._in_flight) > leave:
            failure = self._in_flight.popleft().exception()
            if failure is not None:
                while self._in_flight:
                    self._in_flight.popleft().exception()
                raise failure

    def close(self) -> None:
        """Wait for the files in flight and end the background thread."""
        try:
            self._settle()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def rows_to_table(leaf: str, rows: list[Row]) -> pa.Table:
    """An Arrow table of `rows`; a key missing from some rows is None there."""
    import pyarrow as pa

    uniform = uniform_columns(rows)
    names = uniform or dict.fromkeys(key for row in rows for key in row)
    columns: dict[str, pa.Array] = {}
    for name in names:
        values = uniform[name] if uniform is not None else [row.get(name) for row in rows]
        kinds = set(map(type, values))
        plain = _plain_array(values, kinds.pop()) if len(kinds) == 1 else None
        if plain is not None:
            columns[name] = plain
            continue
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            kinds = sorted({type(v).__name__ for v in values if v is not None})
            raise LeafSchemaError(
                f"Leaf step {leaf!r} produced values of different types in column {name!r} "
                f"({', '.join(kinds)}): {exc}. A column must hold one type (None is allowed): "
                "convert the values in the step, for example with `json.dumps`."
            ) from exc
    return pa.table(columns)


def _plain_array(values: list[Any], kind: type) -> pa.Array | None:
    """`pa.array(values)` for values all int, float or str (no None), built from buffers;
    None when that cannot be (another kind, an int beyond 64 bits, a non-UTF-8 string).

    pyarrow imports pandas (0.1-0.2 s) on its first conversion of Python values, to
    check whether they are pandas objects; plain columns built this way spare a run that
    never needs pandas that cost. (The cache's codec does the same for checkpoints:
    `stillhouse.cache.codec.buffered_array`; the packages do not import each other.)"""
    import pyarrow as pa

    try:
        if kind is int or kind is float:
            data = c_array("q" if kind is int else "d", values)
            arrow_type = pa.int64() if kind is int else pa.float64()
            return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(data)])
        if kind is str:
            if all(map(str.isascii, values)):  # one character, one byte: encode them all at once
                data, lengths = "".join(values).encode("ascii"), map(len, values)
            else:
                encoded = [value.encode() for value in values]
                data, lengths = b"".join(encoded), map(len, encoded)
            offsets = c_array("i", itertools.accumulate(lengths, initial=0))
            buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
            return pa.Array.from_buffers(pa.string(), len(values), buffers)
    except (OverflowError, UnicodeEncodeError):
        return None
    return None


def unify_schema(leaf: str, schema: pa.Schema | None, new: pa.Schema) -> pa.Schema:
    """`schema` widened to take `new` (null -> string, new struct fields, int -> float).

    Checked per batch so that a column changing type fails the run at the batch that
    changed it, not when the results are read."""
    if schema is None:
        return new
    import pyarrow as pa

    try:
        return pa.unify_schemas([schema, new], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise LeafSchemaError(
            f"Leaf step {leaf!r} produced a column whose type changed between batches: "
            f"{exc}. A column must hold one type (None is allowed): convert the values in "
            "the step, for example with `json.dumps`."
        ) from exc
