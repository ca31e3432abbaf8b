"""Rows as data: the on-disk encoding of batches (checkpoints, batch data, remote objects).

A batch of rows is one Arrow IPC stream holding one record batch, compressed with
zstd as a whole (from `COMPRESS_FROM` bytes), after an 8-byte size. A step store may
take its large columns out first (`split_columns`): each is then a `Blob`, stored once
per content under its xxh3-128 digest, and the batch names it by position and digest
(`join_columns` puts it back, checking the digest). A column whose values Arrow types exactly (one of bool, int, float,
str, bytes, naive datetime, date, or a list of one of the first four, with None
allowed, and present in every row) is a native Arrow column. Any other column is a
string column of per-row JSON text in a typed encoding (`to_json`): tuples, bytes,
datetimes, dicts with non-string keys, numpy arrays, ... survive exactly, and a row
that lacks the key is null. Decoding parses Arrow and JSON only: nothing on disk can
run code when it is read (no pickle, no eval).

What does not round-trip: the order of keys inside a row follows the batch's first
row that has them, and a value of a type not listed in `to_json` is refused with a
`CacheError` naming it (it could only be stored as code).
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import decimal
import itertools
import json
import struct
import uuid
from array import array as c_array
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from stillhouse.core.errors import CacheError, CorruptCacheError
from stillhouse.core.rows import uniform_columns

TAG = "\u0000sh"
"""Key of a tagged JSON value (`{TAG: kind, "v": ...}`). A user dict holding this key
is itself stored tagged, so no value can be mistaken for a tag."""
JSON_COLUMN = b"stillhouse.json"
ERROR_KEY = b"stillhouse.error"
_SIZE = struct.Struct("<Q")  # the stream's size before compression; 0: not compressed
COMPRESS_FROM = 32 * 1024
"""Streams smaller than this are stored as they are: Arrow's zstd costs ~35 us per call
whatever the size, more than the rest of the encoding of a small batch, and saves a
few KB; from this size on it costs less than writing the bytes it saves."""
BLOB_FROM = 64 * 1024
"""A column this large (Arrow bytes) is stored apart, once per content (`split_columns`):
a column a step passes through unchanged (the text it classified, the prompt it
answered) is not stored again by every step after the one that made it."""
REFS_KEY = b"stillhouse.refs"
_MISSING = object()
_SCHEMAS: dict[tuple[Any, ...], bytes] = {}  # a blob's one-field schema, serialized, by field
_SCALARS = (bool, int, float, str)
_NATIVE = {bool, int, float, str, bytes, dt.datetime, dt.date, type(None)}

_codec: Any = None
_types: dict[type, Any] | None = None
_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
"""What closes an Arrow IPC stream (continuation marker, zero length)."""


def _zstd() -> Any:
    global _codec
    if _codec is None:
        import pyarrow as pa

        _codec = pa.Codec("zstd", compression_level=1)
    return _codec


# -- typed JSON ------------------------------------------------------------------------


def to_json(value: Any, where: str = "a row") -> Any:
    """`value` as plain JSON types, with non-JSON types tagged so `from_json` restores them."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value
    if kind is float:
        return value if value == value and value not in (float("inf"), float("-inf")) else {TAG: "float", "v": repr(value)}
    if kind is list:
        return [to_json(item, where) for item in value]
    if kind is dict:
        if TAG not in value and all(type(key) is str for key in value):
            return {key: to_json(item, where) for key, item in value.items()}
        return {TAG: "dict", "v": [[to_json(k, where), to_json(v, where)] for k, v in value.items()]}
    if kind is tuple:
        return {TAG: "tuple", "v": [to_json(item, where) for item in value]}
    if kind is bytes or kind is bytearray:
        return {TAG: kind.__name__, "v": base64.b64encode(value).decode("ascii")}
    if kind in (dt.datetime, dt.date, dt.time):
        return {TAG: kind.__name__, "v": value.isoformat()}
    if kind is dt.timedelta:
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if kind is decimal.Decimal:
        return {TAG: "decimal", "v": str(value)}
    if kind is uuid.UUID:
        return {TAG: "uuid", "v": str(value)}
    if kind is set or kind is frozenset:
        return {TAG: kind.__name__, "v": [to_json(item, where) for item in value]}
    numpy = _numpy_json(value, where)
    if numpy is not None:
        return numpy
    # Subclasses (enums, OrderedDict, ...) are kept as the builtin value they equal.
    for base in (bool, int, float, str, bytes):
        if isinstance(value, base):
            return to_json(base(value), where)
    if isinstance(value, dict):
        return to_json(dict(value), where)
    if isinstance(value, list):
        return to_json(list(value), where)
    raise CacheError(
        f"{where} holds a value of type {kind.__module__}.{kind.__qualname__} ({_short(value)}), "
        "which the cache cannot store as data. Convert it in the step to JSON-like values "
        "(dict, list, str, int, float, bool, None, bytes, datetime) or a numpy array."
    )


def _numpy_json(value: Any, where: str) -> Any:
    module = type(value).__module__
    if not module.startswith("numpy"):
        return None
    import numpy as np

    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        data = base64.b64encode(np.ascontiguousarray(value).tobytes()).decode("ascii")
        return {TAG: "ndarray", "v": [value.dtype.str, list(value.shape), data]}
    if isinstance(value, np.generic) and not value.dtype.hasobject:
        return {TAG: "npscalar", "v": [value.dtype.str, base64.b64encode(value.tobytes()).decode("ascii")]}
    if isinstance(value, np.ndarray):
        return {TAG: "ndarray-list", "v": [to_json(item, where) for item in value.tolist()]}
    return None


def from_json(value: Any) -> Any:
    """The inverse of `to_json`."""
    kind = type(value)
    if kind is list:
        return [from_json(item) for item in value]
    if kind is not dict:
        return value
    tag = value.get(TAG)
    if tag is None:
        return {key: from_json(item) for key, item in value.items()}
    data = value["v"]
    if tag == "dict":
        return {_hashable(from_json(k)): from_json(v) for k, v in data}
    if tag == "tuple":
        return tuple(from_json(item) for item in data)
    if tag == "float":
        return float(data)
    if tag == "bytes":
        return base64.b64decode(data)
    if tag == "bytearray":
        return bytearray(base64.b64decode(data))
    if tag == "datetime":
        return dt.datetime.fromisoformat(data)
    if tag == "date":
        return dt.date.fromisoformat(data)
    if tag == "time":
        return dt.time.fromisoformat(data)
    if tag == "timedelta":
        return dt.timedelta(days=data[0], seconds=data[1], microseconds=data[2])
    if tag == "decimal":
        return decimal.Decimal(data)
    if tag == "uuid":
        return uuid.UUID(data)
    if tag in ("set", "frozenset"):
        items = [_hashable(from_json(item)) for item in data]
        return set(items) if tag == "set" else frozenset(items)
    if tag in ("ndarray", "npscalar", "ndarray-list"):
        return _numpy_from_json(tag, data)
    raise ValueError(f"unknown tag {tag!r}")


def _numpy_from_json(tag: str, data: Any) -> Any:
    import numpy as np

    if tag == "ndarray-list":
        return np.array([from_json(item) for item in data], dtype=object)
    dtype = np.dtype(data[0])
    if dtype.hasobject:
        raise ValueError("object arrays are not data")
    if tag == "npscalar":
        return np.frombuffer(base64.b64decode(data[1]), dtype=dtype)[0]
    return np.frombuffer(base64.b64decode(data[2]), dtype=dtype).reshape(data[1]).copy()


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- batches of rows -------------------------------------------------------------------


def _native(values: list[Any]) -> Any | None:
    """An Arrow array holding exactly `values`, or None when Arrow would change them."""
    import pyarrow as pa

    kinds = set(map(type, values))
    if not kinds <= _NATIVE:
        if kinds - {list, type(None)}:
            return None
        # Lists of one scalar type (embeddings, token ids, tags) stay native.
        inner: set[type] = set()
        for value in values:
            if value is not None:
                inner.update(map(type, value))
        if len(inner) > 1 or not inner <= set(_SCALARS):
            return None
    elif len(kinds - {type(None)}) > 1 or (dt.datetime in kinds and any(v is not None and v.tzinfo is not None for v in values)):
        return None
    if len(kinds) == 1:
        array = buffered_array(values, next(iter(kinds)))
        if array is not None:
            return array
    try:
        # A type given (one scalar kind, the usual column) spares Arrow inferring it.
        array = pa.array(values, type=_arrow_type(kinds))
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return None
    return array


def buffered_array(values: list[Any], kind: type, *, large: bool = False) -> Any | None:
    """`pa.array(values)` for values all of `kind` int, float or str (no None), built
    from buffers; None when that cannot be (another kind, an int beyond 64 bits, a
    string that is not UTF-8).

    Not for speed alone: pyarrow imports pandas (0.1-0.2 s) on its first conversion of
    Python values, to check whether they are pandas objects. Plain columns built this
    way keep a run that never needs pandas from paying for it."""
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
            offsets = c_array("q" if large else "i", itertools.accumulate(lengths, initial=0))
            arrow_type = pa.large_string() if large else pa.string()
            return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    except (OverflowError, UnicodeEncodeError):
        return None
    return None


def _arrow_type(kinds: set[type]) -> Any:
    """The Arrow type of a column whose values are of `kinds` (None: let Arrow infer it)."""
    global _types
    if _types is None:
        import pyarrow as pa

        _types = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}
    kinds = kinds - {type(None)}
    return _types.get(next(iter(kinds))) if len(kinds) == 1 else None


def encode_batch(
    rows: list[dict[str, Any]], *, error: str | None = None, where: str = "a batch", memo: ColumnMemo | None = None
) -> Any:
    """`rows` as one Arrow record batch (see the module docstring), not yet serialized;
    a large text column equal to one `memo` holds is not encoded again."""
    import pyarrow as pa

    uniform = uniform_columns(rows)
    names: dict[str, None] = dict.fromkeys(uniform or ())
    if uniform is None:
        for row in rows:
            names.update(dict.fromkeys(row))
    for key in names:
        if type(key) is not str:
            raise CacheError(
                f"{where} has a row with the key {key!r} of type {type(key).__name__}: "
                "row keys must be strings. Rename the column in the step."
            )
    arrays, fields = [], []
    for name in names:
        if uniform is not None:
            values = uniform[name]
            array = None if memo is None else memo.array(name, values)
            if array is None:
                array = _native(values)
                if memo is not None and array is not None:
                    memo.remember(name, values, array)
        else:
            values = [row.get(name, _MISSING) for row in rows]
            array = None if any(v is _MISSING for v in values) else _native(values)
        if array is not None:
            fields.append(pa.field(name, array.type))
        else:
            context = f"Column {name!r} of {where}"
            texts = [
                None if v is _MISSING else json.dumps(to_json(v, context), allow_nan=False)
                for v in values
            ]
            array = None if any(t is None for t in texts) else buffered_array(texts, str, large=True)
            if array is None:
                array = pa.array(texts, type=pa.large_string())
            fields.append(pa.field(name, array.type, metadata={JSON_COLUMN: b"1"}))
        arrays.append(array)
    metadata = {b"rows": str(len(rows)).encode()}
    if error is not None:
        metadata[ERROR_KEY] = error.encode("utf-8", "surrogatepass")
    schema = pa.schema(fields, metadata=metadata)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def pack(batch: Any) -> bytes:
    """A record batch as the bytes of a (compressed) Arrow IPC stream."""
    # The bytes `pa.ipc.new_stream` writes (schema, batch, end of stream), without the
    # cost of a stream writer per batch.
    raw = b"".join((batch.schema.serialize().to_pybytes(), batch.serialize().to_pybytes(), _END_OF_STREAM))
    if len(raw) < COMPRESS_FROM:
        return _SIZE.pack(0) + raw
    return _SIZE.pack(len(raw)) + _zstd().compress(raw, asbytes=True)


def encode_rows(rows: list[dict[str, Any]], *, error: str | None = None, where: str = "a batch") -> bytes:
    """`rows` as a compressed Arrow IPC stream (see the module docstring)."""
    return pack(encode_batch(rows, error=error, where=where))


def unpack(data: bytes, where: str = "the cache") -> Any:
    """The Arrow table of `pack`'s bytes; `CorruptCacheError` naming `where` if bad."""
    import pyarrow as pa

    try:
        (size,) = _SIZE.unpack_from(data)
        body = memoryview(data)[_SIZE.size:]
        raw = body if size == 0 else _zstd().decompress(body, decompressed_size=size)
        return pa.ipc.open_stream(raw).read_all()
    except (pa.ArrowException, OSError, MemoryError, ValueError, TypeError, struct.error) as exc:
        raise _undecodable(where, exc) from exc


def _undecodable(where: str, exc: BaseException) -> CorruptCacheError:
    return CorruptCacheError(
        f"{where} holds a batch that cannot be decoded ({exc}). Delete it or run with "
        "use_cache=False to recompute this step."
    )


def table_rows(table: Any, where: str = "the cache") -> tuple[list[dict[str, Any]], str | None]:
    """`(rows, error)` of a table `unpack` (and `join_columns`) made."""
    import pyarrow as pa

    try:
        metadata = table.schema.metadata or {}
        count = int(metadata[b"rows"])
        error = metadata.get(ERROR_KEY)
        columns = []
        missing = False
        for field, column in zip(table.schema, table.columns, strict=True):
            values = column.to_pylist()
            if field.metadata and JSON_COLUMN in field.metadata:
                values = [_MISSING if t is None else from_json(json.loads(t)) for t in values]
                missing = missing or any(v is _MISSING for v in values)
            columns.append(values)
    except (pa.ArrowException, OSError, MemoryError, ValueError, KeyError, TypeError) as exc:
        raise _undecodable(where, exc) from exc
    names = table.schema.names
    if not names:
        rows: list[dict[str, Any]] = [{} for _ in range(count)]
    else:
        rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
        if missing:
            rows = [{k: v for k, v in row.items() if v is not _MISSING} for row in rows]
    return rows, None if error is None else error.decode("utf-8", "surrogatepass")


def decode_rows(data: bytes, where: str = "the cache") -> tuple[list[dict[str, Any]], str | None]:
    """`(rows, error)` from `encode_rows`' bytes; `CorruptCacheError` naming `where` if bad."""
    return table_rows(unpack(data, where), where)


# -- large columns, stored once per content -------------------------------------------


def arrow_bytes(array: Any) -> int:
    """The bytes of `array`'s buffers: its size for the arrays built here (never slices).

    Not `array.nbytes`, which walks a string array's offsets (49 us for 1,000 texts) and
    frees the GIL to do it: with another thread running Python, getting it back took
    0.87 ms a call (docs/benchmarks.md, "Issue 20, fifth pass")."""
    return array.get_total_buffer_size()


def _field_schema(field: Any) -> bytes:
    """The serialized one-field schema of a blob of `field` (serializing frees the GIL:
    0.5 ms a call beside a busy thread), made once per distinct field."""
    metadata = field.metadata
    key = (field.name, field.type, field.nullable, tuple(sorted(metadata.items())) if metadata else ())
    found = _SCHEMAS.get(key)
    if found is None:
        import pyarrow as pa

        found = pa.schema([field]).serialize().to_pybytes()
        if len(_SCHEMAS) < 1024:  # column names come from user data: keep it bounded
            _SCHEMAS[key] = found
    return found


class Blob(NamedTuple):
    """One column of a batch on its own: a one-field Arrow schema and the record batch
    message of that column, named by the xxh3-128 `digest` of both."""

    digest: bytes
    schema: bytes
    body: Any  # pa.Buffer

    def parts(self) -> list[Any]:
        """The stored payload, in pieces (no copy of the body): sizes, schema, body."""
        body = self.body
        size = 0
        if body.size >= COMPRESS_FROM:
            size, body = body.size, _zstd().compress(body)
        return [_SIZE.pack(len(self.schema)) + self.schema + _SIZE.pack(size), body]


def _digest(schema: bytes, body: Any) -> bytes:
    import xxhash

    hasher = xxhash.xxh3_128(schema)
    hasher.update(body)
    return hasher.digest()


class BlobSink(Protocol):
    def has(self, digest: bytes) -> bool:
        """Whether a blob of this digest is stored where the batch may refer to it."""

    def add(self, blob: Blob) -> None:
        """Store a blob it does not have."""


def split_columns(batch: Any, sink: BlobSink, memo: ColumnMemo | None = None) -> Any:
    """`batch` without its columns of `BLOB_FROM` bytes or more, each a `Blob` stored in
    `sink` unless it has it; the batch's schema metadata names them (`REFS_KEY`:
    position, digest) for `join_columns`. Equal columns make equal blobs, whatever step
    made them. A column `memo` knows the digest of is not serialized and hashed again."""
    import pyarrow as pa

    keep, refs = [], []
    for position, (field, column) in enumerate(zip(batch.schema, batch.columns, strict=True)):
        if arrow_bytes(column) < BLOB_FROM:
            keep.append(position)
            continue
        schema_bytes = _field_schema(field)
        digest = None if memo is None else memo.digest(schema_bytes, column)
        if digest is None or not sink.has(digest):
            body = pa.RecordBatch.from_arrays([column], schema=pa.schema([field])).serialize()
            digest = _digest(schema_bytes, body)
            if not sink.has(digest):
                sink.add(Blob(digest, schema_bytes, body))
            if memo is not None:
                memo.remember_digest(schema_bytes, column, digest)
        refs.append([position, digest.hex()])
    if not refs:
        return batch
    metadata = {**(batch.schema.metadata or {}), REFS_KEY: json.dumps(refs).encode()}
    return batch.select(keep).replace_schema_metadata(metadata)


class ColumnMemo:
    """Large text columns encoded lately, so that a step passing one through (the text
    it labelled, the prompt it answered) costs neither its encoding nor its blob's
    serialization and hash again.

    `array(name, values)` is the array of an earlier column of that name with equal
    values: str values only, for which equal values make identical Arrow arrays.
    `digest(schema, column)` is the blob digest of an array this memo handed out or
    was told of, found by its buffers' addresses (the memo keeps the array alive, so an
    address is never reused while it is known). At most `limit` bytes of arrays are
    kept, the least recently used going first."""

    def __init__(self, limit: int = 64 * 1024 * 1024) -> None:
        self.limit = limit
        self._by_values: collections.OrderedDict[tuple[str, int, str], _Memo] = collections.OrderedDict()
        self._by_buffers: dict[tuple[Any, ...], _Memo] = {}
        self._bytes = 0

    def array(self, name: str, values: list[Any]) -> Any | None:
        if not values or type(values[0]) is not str:
            return None
        key = (name, len(values), values[0])
        entry = self._by_values.get(key)
        if entry is None or not (entry.values is values or entry.values == values):
            return None
        if set(map(type, values)) != {str}:  # equal, but a str subclass is stored another way
            return None
        self._by_values.move_to_end(key)
        return entry.array

    def remember(self, name: str, values: list[Any], array: Any) -> None:
        if not values or type(values[0]) is not str or not BLOB_FROM <= arrow_bytes(array) <= self.limit:
            return
        key = (name, len(values), values[0])
        if key in self._by_values:
            self._forget(key)
        entry = _Memo(values, array, _buffers(array), {})
        self._by_values[key] = entry
        self._by_buffers[entry.buffers] = entry
        self._bytes += arrow_bytes(array)
        while self._bytes > self.limit:
            self._forget(next(iter(self._by_values)))

    def digest(self, schema: bytes, column: Any) -> bytes | None:
        entry = self._by_buffers.get(_buffers(column))
        return entry.digests.get(schema) if entry is not None else None

    def remember_digest(self, schema: bytes, column: Any, digest: bytes) -> None:
        entry = self._by_buffers.get(_buffers(column))
        if entry is not None:
            entry.digests[schema] = digest

    def _forget(self, key: tuple[str, int, str]) -> None:
        entry = self._by_values.pop(key)
        self._by_buffers.pop(entry.buffers, None)
        self._bytes -= arrow_bytes(entry.array)


class _Memo(NamedTuple):
    values: list[Any]
    array: Any
    buffers: tuple[Any, ...]
    digests: dict[bytes, bytes]  # by the blob's one-field schema


def _buffers(array: Any) -> tuple[Any, ...]:
    """What makes an Arrow array the same array: type, length, offset, buffer addresses."""
    return (str(array.type), len(array), array.offset, *(b.address if b is not None else 0 for b in array.buffers()))


def decode_blob(data: bytes, digest: bytes, where: str) -> tuple[Any, Any]:
    """The `(field, array)` of a stored `Blob`, checked against its digest."""
    import pyarrow as pa

    try:
        view = memoryview(data)
        (length,) = _SIZE.unpack_from(view)
        schema = bytes(view[_SIZE.size : _SIZE.size + length])
        (size,) = _SIZE.unpack_from(view, _SIZE.size + length)
        body = view[2 * _SIZE.size + length :]
        raw = pa.py_buffer(body) if size == 0 else _zstd().decompress(body, decompressed_size=size)
        if _digest(schema, raw) != digest:
            raise ValueError("its checksum differs from the one it is stored under")
        read_schema = pa.ipc.read_schema(pa.py_buffer(schema))
        column = pa.ipc.read_record_batch(raw, read_schema).column(0)
    except (pa.ArrowException, OSError, MemoryError, ValueError, IndexError, struct.error) as exc:
        raise _undecodable(where, exc) from exc
    return read_schema.field(0), column


def join_columns(table: Any, fetch: Callable[[bytes], tuple[Any, Any]], where: str) -> Any:
    """The whole table of a batch `split_columns` stored: its columns back in place."""
    import pyarrow as pa

    metadata = dict(table.schema.metadata or {})
    refs = metadata.pop(REFS_KEY, None)
    if refs is None:
        return table
    try:
        positions = json.loads(refs)
        count = int(metadata[b"rows"])
        fields, columns = list(table.schema), list(table.columns)
        for position, digest in sorted(positions):
            field, column = fetch(bytes.fromhex(digest))
            if len(column) != count:
                raise ValueError(f"column {field.name!r} holds {len(column)} rows, not {count}")
            fields.insert(position, field)
            columns.insert(position, pa.chunked_array([column], type=field.type))
        return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=metadata))
    except (pa.ArrowException, ValueError, KeyError, TypeError) as exc:
        raise _undecodable(where, exc) from exc


def encode_route(successors: list[str], routing: str | None) -> bytes:
    """A routing decision, with the identity of the routing function that made it."""
    return encode_json({"to": list(successors), "routing": routing})


def decode_route(data: bytes, routing: str | None, where: str) -> list[str] | None:
    """The successors a stored decision names, if the routing function `routing` made it;
    None for another function's decision (or one stored before decisions named theirs):
    the run decides that batch's route again."""
    value = decode_json(data, where)
    if isinstance(value, dict) and value.get("routing") == routing and isinstance(value.get("to"), list):
        return list(value["to"])
    return None


def encode_json(value: Any) -> bytes:
    """Small structured values (routing decisions) as typed JSON."""
    return json.dumps(to_json(value), allow_nan=False).encode("ascii")


def decode_json(data: bytes, where: str = "the cache") -> Any:
    try:
        return from_json(json.loads(data.decode("ascii")))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCacheError(
            f"{where} holds a record that cannot be decoded ({exc}). Delete it or run with "
            "use_cache=False to recompute this step."
        ) from exc
