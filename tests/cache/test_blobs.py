"""Large columns are stored once per content (issue 20): a column a step passes through
unchanged is a blob in the log of the step that made it, and the steps after it refer
to it. References only point upstream, are checked by digest, and a damaged blob is an
error naming its file, never other rows."""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from stillhouse.cache.codec import (
    BLOB_FROM,
    Blob,
    ColumnMemo,
    decode_blob,
    encode_batch,
    join_columns,
    split_columns,
)
from stillhouse.cache.records import BLOB, iter_headers
from stillhouse.core import Pipeline, step
from stillhouse.core.errors import CorruptCacheError, StillhouseError
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.core.typing import StepInput, StepOutput
from tests.support.results import rows_of
from tests.support.steps import Double, Tag

pytestmark = pytest.mark.timeout(120)

ROWS, BATCH, TEXT = 120, 40, 2000  # a batch's text column: 80 KB, above BLOB_FROM


def texts() -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [{"x": i, "text": f"{i:05d}" + "".join(rng.choices("abcdefgh ", k=TEXT))} for i in range(ROWS)]


def build(cache: Path, tag: str = "a") -> Pipeline:
    with Pipeline(name="blobs", cache_dir=cache, executor="sync") as pipeline:
        loader = LoadDataFromDicts(name="load", data=texts(), batch_size=BATCH)
        loader >> Double(name="double", input_batch_size=BATCH) >> Tag(name="tag", tag=tag, input_batch_size=BATCH)
    return pipeline


def reference(tag: str) -> list[dict[str, Any]]:
    return [{**row, "y": 2 * row["x"], "z": tag} for row in texts()]


def log_of(cache: Path, step_name: str) -> Path:
    return next((cache / "blobs" / "steps").glob(f"{step_name}-*")) / "batches.log"


def blob_count(log: Path) -> int:
    return sum(header.kind == BLOB for header in iter_headers(log))


def test_a_column_passed_through_is_stored_once_along_the_chain(tmp_path):
    assert rows_of(build(tmp_path).run(progress=False)) == reference("a")
    assert blob_count(log_of(tmp_path, "load")) == ROWS // BATCH
    assert blob_count(log_of(tmp_path, "double")) == 0
    assert blob_count(log_of(tmp_path, "tag")) == 0
    text_bytes = ROWS * TEXT
    assert log_of(tmp_path, "double").stat().st_size < text_bytes / 10
    assert log_of(tmp_path, "tag").stat().st_size < text_bytes / 10


def test_batches_that_refer_upstream_read_back_exactly(tmp_path):
    build(tmp_path).run(progress=False)
    # An edited leaf re-reads double's stored batches, whose text lives in load's log.
    again = build(tmp_path, tag="b")
    assert rows_of(again.run(progress=False)) == reference("b")
    assert {row["step"] for row in again.last_run_summary if row["started_worker"]} == {"tag"}


@step(inputs=["x"], outputs=["note"])
def Note(inputs: StepInput, word: str = "same") -> StepOutput:
    for row in inputs:
        row["note"] = word * (BLOB_FROM // len(word) // BATCH + 10)
    yield inputs


def test_a_step_never_refers_to_a_blob_of_a_step_beside_it(tmp_path):
    """Two branches make the same large column: each stores its own, so recomputing one
    (a new generation) cannot take away what the other's batches refer to."""

    def branches(word: str, after: bool = False) -> Pipeline:
        with Pipeline(name="beside", cache_dir=tmp_path, executor="sync") as pipeline:
            loader = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(ROWS)], batch_size=BATCH)
            left = Note(name="left", input_batch_size=BATCH)
            loader >> [left, Note(name="right", word=word, input_batch_size=BATCH)]
            if after:  # a new step after left re-reads left's stored batches
                left >> Tag(name="after", input_batch_size=BATCH)
        return pipeline

    def log(name: str) -> Path:
        return next((tmp_path / "beside" / "steps").glob(f"{name}-*")) / "batches.log"

    branches("same").run(progress=False)
    assert blob_count(log("left")) == blob_count(log("right")) == 1  # equal batches: one blob each
    branches("other").run(progress=False)  # right is recomputed in a new generation
    distiset = branches("other", after=True).run(progress=False)
    assert [note[:4] for note in distiset["after"]["train"]["note"]] == ["same"] * ROWS
    assert [note[:5] for note in distiset["right"]["train"]["note"]] == ["other"] * ROWS


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("owner", ["load", "double"])
def test_a_damaged_log_gives_the_reference_rows_or_an_error_naming_it(tmp_path, owner, how):
    build(tmp_path).run(progress=False)
    log = log_of(tmp_path, owner)
    data = bytearray(log.read_bytes())
    if how == "delete":
        log.unlink()
    elif how == "truncate":
        log.write_bytes(bytes(data[: len(data) // 2]))
    else:
        middle = len(data) // 2
        data[middle : middle + 3] = bytes(b ^ 0xFF for b in data[middle : middle + 3])
        log.write_bytes(bytes(data))
    try:
        rows = rows_of(build(tmp_path, tag="b").run(progress=False))
    except StillhouseError as exc:
        assert str(log) in str(exc) or str(log.parent) in str(exc), f"{exc} does not name {log}"
        assert "use_cache=False" in str(exc)
    else:
        assert rows == reference("b")


# -- the codec -------------------------------------------------------------------------


class Sink(dict):
    def has(self, digest: bytes) -> bool:
        return digest in self

    def add(self, blob: Blob) -> None:
        assert blob.digest not in self
        self[blob.digest] = blob


def split(rows: list[dict[str, Any]], memo: ColumnMemo | None = None, sink: Sink | None = None) -> tuple[Any, Sink]:
    sink = Sink() if sink is None else sink
    return split_columns(encode_batch(rows, memo=memo), sink, memo), sink


def stored(blob: Blob) -> bytes:
    return b"".join(bytes(part) for part in blob.parts())


def test_split_and_join_give_back_every_column_in_its_place():
    big = "w" * 1000
    rows = [
        {"a": i, "text": f"{i}{big}", "tags": [big, "x"], "meta": {"k": (i, big)}, "n": None if i % 3 else 1.5}
        for i in range(100)
    ]
    batch, blobs = split(rows)
    assert set(batch.schema.names) == {"a", "n"}  # the three large columns are blobs
    assert len(blobs) == 3
    table = pa.Table.from_batches([batch])

    def fetch(digest: bytes) -> Any:
        return decode_blob(stored(blobs[digest]), digest, "here")

    whole = join_columns(table, fetch, "here")
    assert whole.schema.names == ["a", "text", "tags", "meta", "n"]
    from stillhouse.cache.codec import table_rows

    assert table_rows(whole)[0] == rows


def test_equal_columns_make_one_blob_and_other_types_another():
    text = [{"t": "v" * 1000 + str(i)} for i in range(100)]
    _, first = split(text)
    _, second = split([dict(row) for row in text])
    assert first.keys() == second.keys()
    as_json = [{"t": ("v" * 1000 + str(i),)} for i in range(100)]  # a tuple column: typed JSON
    _, third = split(as_json)
    assert third.keys().isdisjoint(first.keys())


def test_a_column_of_one_name_and_other_types_reads_back_with_its_own_schema():
    # A blob's one-field schema is serialized once per field (name, type, metadata):
    # one name with three types in a row must each come back as it was.
    from stillhouse.cache.codec import table_rows

    variants = [
        [{"t": "v" * 1000 + str(i)} for i in range(100)],  # string
        [{"t": ("v" * 1000 + str(i),)} for i in range(100)],  # typed JSON (tuple)
        [{"t": ["v" * 1000, str(i)]} for i in range(100)],  # list<string>
        [{"t": "v" * 1000 + str(i)} for i in range(100)],  # string again
    ]
    for rows in variants:
        batch, blobs = split(rows)

        def fetch(digest: bytes, blobs: Sink = blobs) -> Any:
            return decode_blob(stored(blobs[digest]), digest, "here")

        whole = join_columns(pa.Table.from_batches([batch]), fetch, "here")
        assert table_rows(whole)[0] == rows


def test_a_blob_whose_bytes_changed_is_refused_even_with_a_good_frame():
    _, blobs = split([{"t": "q" * 1000 + str(i)} for i in range(100)])
    (digest, blob), = blobs.items()
    data = bytearray(stored(blob))
    data[-1] ^= 0x01
    with pytest.raises(CorruptCacheError, match="here"):
        decode_blob(bytes(data), digest, "here")
    other = struct.pack("<qq", 1, 2)
    with pytest.raises(CorruptCacheError, match="checksum"):
        decode_blob(stored(blob), other, "here")


def test_a_column_passed_through_is_encoded_once_and_gives_the_same_blob():
    memo = ColumnMemo()
    rows = [{"x": i, "text": "t" * 1000 + str(i)} for i in range(100)]
    first, sink = split(rows, memo)
    copied = [{"text": str(row["text"]), "y": 1} for row in rows]  # equal, not the same objects
    second, _ = split(copied, memo, sink)  # the sink asserts nothing is added twice
    assert len(sink) == 1
    assert first.schema.metadata[b"stillhouse.refs"] == b"[[1, \"%s\"]]" % next(iter(sink)).hex().encode()
    assert second.schema.metadata[b"stillhouse.refs"] == b"[[0, \"%s\"]]" % next(iter(sink)).hex().encode()


def test_the_memo_never_answers_for_values_that_differ_or_are_not_plain_strings():
    memo = ColumnMemo()
    rows = [{"text": "t" * 1000 + str(i)} for i in range(100)]
    _, sink = split(rows, memo)
    changed = [dict(row) for row in rows]
    changed[-1]["text"] = "changed"
    split(changed, memo, sink)
    assert len(sink) == 2

    class Text(str):
        pass

    subclassed = [{"text": Text(row["text"])} for row in rows]  # equal, but stored as JSON
    _, sink = split(subclassed, memo, Sink())
    (digest,) = sink
    field, _ = decode_blob(stored(sink[digest]), digest, "here")
    assert field.metadata == {b"stillhouse.json": b"1"}


def test_the_memo_holds_at_most_its_limit():
    memo = ColumnMemo(limit=300_000)
    for batch in range(10):
        split([{"text": f"{batch}-{i}" + "m" * 1000} for i in range(100)], memo)
    assert memo._bytes <= 300_000
