"""Inline data kept out of pipeline files.

A step field marked `json_schema_extra={"inline_data": True}` holds rows the user
passed in memory (`LoadDataFromDicts(data=...)`, `make_generator_step`,
`run(dataset=...)`, `DataSampler(data=...)`). Writing such rows into
`pipeline.yaml` made a 100k-row pipeline a 6 MB YAML, rewritten on every run.
Instead, when a pipeline file is written to a folder, each inline field is
written once as a Parquet file named by its content hash:

```
<folder>/pipeline.yaml                   data: {inline_data: inline_data/<sha>.parquet, sha256: <sha>,
                                               rows: 100000, file_sha256: <hash of the file>}
<folder>/inline_data/<sha>.parquet       the rows
```

The content hash (`sha256`) is that of the rows' JSON (pydantic-core's encoder),
whatever the file's format. Rows go to Parquet only when they come back from it
exactly (the same JSON): a column of mixed types, a dict whose keys differ from
row to row, or a date would come back changed, and such rows go to `<sha>.json`
instead (a JSON array), as they also do when pyarrow is not installed (core alone
does not need it). A file that is already there (same hash) is not written again.
Reading the pipeline file back (`Pipeline.from_yaml`, `stillhouse pipeline run
--config`) checks the file's bytes before parsing them (a Parquet file against
`file_sha256`, a JSON file against `sha256`) and the rows' hash after. The same
hash stands in for the rows in the step's cache signature
(`_Step.signature_extra`), so signatures stay cheap and still change when the
data does, and do not depend on the file's format.

Rows are hashed once per list object: assign a new list to change a step's data;
rows mutated in place after the step was built are not noticed.

Not here: how steps use their data (core/steps), where run folders are (cache).
"""

from __future__ import annotations

import hashlib
import os
import weakref
from pathlib import Path
from typing import Any

import pydantic_core

from stillhouse.core.errors import SerializationError

REFERENCE_KEY = "inline_data"
FOLDER = "inline_data"
PARQUET, JSON = ".parquet", ".json"
_MARK = "inline_data"

# id(step) -> {field: (the rows list it was computed for, its length, digest)}; an entry
# goes with its step (steps are unhashable pydantic models, hence ids and finalize).
_digests: dict[int, dict[str, tuple[Any, int, str]]] = {}


def inline_fields(step: Any) -> list[str]:
    """Names of the step's fields marked `json_schema_extra={"inline_data": True}`."""
    fields = []
    for name, field in type(step).model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get(_MARK):
            fields.append(name)
    return fields


def encode(rows: Any) -> bytes:
    """The bytes of the data file; their sha256 is the data's identity."""
    try:
        return pydantic_core.to_json(rows)
    except pydantic_core.PydanticSerializationError as exc:
        raise SerializationError(
            f"Inline data cannot be written as JSON: {exc}. Keep inline rows to JSON-like "
            "values (str, numbers, bool, None, lists, dicts, dates)."
        ) from exc


def digest(step: Any, field: str) -> str:
    """sha256 of the field's encoded rows, computed once per rows list."""
    rows = getattr(step, field)
    memo = _digests.get(id(step))
    if memo is None:
        memo = _digests[id(step)] = {}
        weakref.finalize(step, _digests.pop, id(step), None)
    known = memo.get(field)
    if known is not None and known[0] is rows and known[1] == len(rows):
        return known[2]
    value = hashlib.sha256(encode(rows)).hexdigest()
    memo[field] = (rows, len(rows), value)
    return value


def signature_values(step: Any) -> dict[str, str]:
    """What stands in for each inline field in the step's signature: its hash."""
    return {field: f"sha256:{digest(step, field)}" for field in inline_fields(step)}


def write_references(step: Any, directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Write each inline field of `step` under `directory/inline_data/` (unless a file with
    that hash is there already) and return the references that replace them."""
    references = {}
    for field in inline_fields(step):
        rows = getattr(step, field)
        sha = digest(step, field)
        reference = _existing(Path(directory), sha) or _write(Path(directory), sha, rows)
        references[field] = {**reference, "rows": len(rows)}
    return references


def _existing(directory: Path, sha: str) -> dict[str, Any] | None:
    """The reference to the data file of hash `sha` already in `directory`, if any."""
    for suffix in (PARQUET, JSON):
        relative = f"{FOLDER}/{sha}{suffix}"
        target = directory / relative
        if target.exists():
            reference = {REFERENCE_KEY: relative, "sha256": sha}
            if suffix == PARQUET:
                reference["file_sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
            return reference
    return None


def _write(directory: Path, sha: str, rows: Any) -> dict[str, Any]:
    parquet = _parquet_bytes(rows, sha)
    suffix, data = (PARQUET, parquet) if parquet is not None else (JSON, encode(rows))
    relative = f"{FOLDER}/{sha}{suffix}"
    target = directory / relative
    # The rows are the user's data: private to the user, as the cache is.
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(partial, target)
    reference = {REFERENCE_KEY: relative, "sha256": sha}
    if parquet is not None:
        reference["file_sha256"] = hashlib.sha256(parquet).hexdigest()
    return reference


def _parquet_bytes(rows: Any, sha: str) -> bytes | None:
    """The rows as a Parquet file, or None: pyarrow is not installed, they are not a list
    of dicts, or they would not come back exactly (their JSON would not hash to `sha`).

    The table is parsed from the rows' JSON by Arrow's reader, not converted from Python
    values: that conversion imports pandas (0.1-0.2 s, on every run that writes a new
    file). So values come back as JSON types do: a date column (written as its ISO
    text, read back as a timestamp) does not match, and stays JSON."""
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        return None
    try:
        import pyarrow as pa
        import pyarrow.json as pa_json
        import pyarrow.parquet as pq
    except ImportError:
        return None
    try:
        lines = b"\n".join(pydantic_core.to_json(row) for row in rows)
        options = pa_json.ReadOptions(block_size=max(len(lines) + 1, 1 << 20))  # one block: one schema
        table = pa_json.read_json(pa.py_buffer(lines), read_options=options)
        if table.num_rows != len(rows) or hashlib.sha256(encode(table.to_pylist())).hexdigest() != sha:
            return None
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
    except (pa.ArrowException, TypeError, ValueError, OverflowError, SerializationError,
            pydantic_core.PydanticSerializationError):
        return None
    return sink.getvalue().to_pybytes()


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and REFERENCE_KEY in value and "sha256" in value


def resolve_references(
    fields: dict[str, Any], base: str | os.PathLike[str] | None, step_name: str
) -> dict[str, Any]:
    """`fields` with every inline-data reference replaced by the rows it names."""
    resolved = dict(fields)
    for name, value in fields.items():
        if is_reference(value):
            resolved[name] = _read(value, base, step_name, name)
    return resolved


def _read(reference: dict[str, Any], base: str | os.PathLike[str] | None, step: str, field: str) -> Any:
    relative = str(reference[REFERENCE_KEY])
    if base is None:
        raise SerializationError(
            f"Step {step!r}: field {field!r} refers to the data file {relative!r}, but the "
            "pipeline was given as a dict, so there is no folder to find it in. Load it with "
            "Pipeline.from_yaml(path) from the folder that holds it."
        )
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise SerializationError(
            f"Step {step!r}: field {field!r} refers to {relative!r}, outside the pipeline's "
            f"folder. Inline data files live in {FOLDER}/ beside the pipeline file."
        )
    location = f"{str(base).rstrip('/')}/{relative}"
    try:
        data = read_bytes(location)
    except FileNotFoundError:
        raise SerializationError(
            f"Step {step!r}: the data file {location!r} of field {field!r} is missing. Copy "
            f"the {FOLDER}/ folder along with the pipeline file."
        ) from None
    parquet = relative.endswith(PARQUET)
    expected = reference.get("file_sha256") if parquet else reference["sha256"]
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:  # checked before the bytes are parsed
        raise _changed(step, field, location, actual, expected)
    if not parquet:
        return pydantic_core.from_json(data)
    rows = _rows_of_parquet(data, location)
    content = hashlib.sha256(encode(rows)).hexdigest()
    if content != reference["sha256"]:
        raise _changed(step, field, location, content, reference["sha256"], what="rows hash")
    return rows


def _changed(step: str, field: str, location: str, actual: str, expected: Any, what: str = "sha256") -> SerializationError:
    return SerializationError(
        f"Step {step!r}: the data file {location!r} of field {field!r} has {what} "
        f"{actual!r}, not the {expected!r} the pipeline file records: it was "
        "changed or damaged. Restore it, or rebuild the pipeline from its script."
    )


def _rows_of_parquet(data: bytes, location: str) -> list[dict[str, Any]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise SerializationError(
            f"The data file {location!r} is Parquet, which needs pyarrow. Install "
            "stillhouse-cache (or pyarrow) beside stillhouse-core."
        ) from exc
    try:
        # ParquetFile, not read_table: read_table goes through pyarrow.dataset, whose
        # thread pools can abort the interpreter at exit (std::terminate, apache/arrow#34314).
        return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False).to_pylist()
    except pa.ArrowException as exc:
        raise SerializationError(f"The data file {location!r} cannot be read as Parquet: {exc}.") from exc


def read_bytes(location: str) -> bytes:
    """The bytes of a local file or an fsspec URL (fsspec is needed for URLs only)."""
    if "://" in location and not location.startswith("file://"):
        try:
            import fsspec
        except ImportError as exc:
            raise SerializationError(
                f"Reading {location!r} needs fsspec. Install stillhouse-cache or fsspec."
            ) from exc
        with fsspec.open(location, "rb") as handle:
            return handle.read()
    return Path(location.removeprefix("file://")).read_bytes()
