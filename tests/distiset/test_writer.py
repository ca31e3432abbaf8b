"""ParquetOutputWriter: streaming, bounded buffers, atomic files and restarts."""

from __future__ import annotations

import gc
import json
import os

import pyarrow.parquet as pq
import pytest

from stillhouse.core.errors import EngineError
from stillhouse.distiset import ParquetOutputWriter
from stillhouse.distiset.writer import COMPLETE_MARKER, LeafSchemaError


def _files(directory):
    return sorted(os.listdir(directory))


def test_streams_rows_to_numbered_files_with_bounded_buffer(tmp_path):
    writer = ParquetOutputWriter(tmp_path / "data", ["leaf"], rows_per_file=10)
    writer.begin("leaf")
    rows = [{"i": i} for i in range(95)]
    for start in range(0, len(rows), 7):
        writer.write("leaf", rows[start : start + 7])
        # Never more than one file's worth waiting, whatever has been written so far.
        assert writer.buffered_rows["leaf"] < 10
    assert _files(tmp_path / "data" / "leaf") == [f"{n:05d}.parquet" for n in range(9)]
    writer.finish("leaf")

    names = _files(tmp_path / "data" / "leaf")
    assert names == [f"{n:05d}.parquet" for n in range(10)] + [COMPLETE_MARKER]
    counts = [pq.read_metadata(tmp_path / "data" / "leaf" / n).num_rows for n in names[:-1]]
    assert counts == [10] * 9 + [5]
    assert writer.result()["default"]["train"]["i"] == list(range(95))


def test_flushes_early_when_buffered_rows_exceed_the_byte_limit(tmp_path):
    writer = ParquetOutputWriter(tmp_path, ["leaf"], rows_per_file=1000, max_buffer_bytes=10_000)
    writer.begin("leaf")
    for i in range(10):
        writer.write("leaf", [{"i": i, "text": "x" * 3000}])
        # ~3 KB a row: the fourth row crosses 10 KB and the buffer goes to a file.
        assert writer.buffered_rows["leaf"] <= 3
    assert _files(tmp_path / "leaf") == ["00000.parquet", "00001.parquet"]
    assert writer.buffered_rows["leaf"] == 2


def test_no_temporary_files_are_left_and_the_marker_is_written(tmp_path):
    writer = ParquetOutputWriter(tmp_path, ["leaf"], rows_per_file=3)
    writer.begin("leaf")
    writer.write("leaf", [{"i": i} for i in range(7)])
    assert not writer.is_complete("leaf")
    writer.finish("leaf")
    assert writer.is_complete("leaf")
    # os.listdir shows hidden names too: no `.NNNNN.parquet.*.tmp` survives.
    assert _files(tmp_path / "leaf") == [
        "00000.parquet",
        "00001.parquet",
        "00002.parquet",
        COMPLETE_MARKER,
    ]
    marker = json.loads((tmp_path / "leaf" / COMPLETE_MARKER).read_text())
    assert {k: marker[k] for k in ("rows", "files", "version")} == {"rows": 7, "files": 3, "version": ""}
    assert sorted(marker["sizes"]) == ["00000.parquet", "00001.parquet", "00002.parquet"]


def _explode(table, where, **kwargs):
    """A `pq.write_table` that writes half a file, then finds the disk full."""
    where.write(b"PAR1 half a file")
    raise OSError("disk full")


def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path, monkeypatch):
    writer = ParquetOutputWriter(tmp_path, ["leaf"], rows_per_file=2)
    writer.begin("leaf")
    monkeypatch.setattr(pq, "write_table", _explode)
    with pytest.raises(OSError, match="disk full"):
        writer.write("leaf", [{"i": 1}, {"i": 2}])
    assert _files(tmp_path / "leaf") == []


def test_an_interrupted_leaf_is_incomplete_and_begin_restarts_it_from_nothing(tmp_path):
    first = ParquetOutputWriter(tmp_path, ["leaf"], rows_per_file=2)
    first.begin("leaf")
    first.write("leaf", [{"i": i} for i in range(5)])
    first.flush()
    # The driver died here, mid-way through writing a file: no finish(), a temporary left.
    (tmp_path / "leaf" / ".00003.parquet.0123abcd.tmp").write_bytes(b"PAR1 partial")
    assert len(_files(tmp_path / "leaf")) == 4

    second = ParquetOutputWriter(tmp_path, ["leaf"], rows_per_file=2)
    assert not second.is_complete("leaf")
    second.begin("leaf")
    assert _files(tmp_path / "leaf") == []
    second.write("leaf", [{"i": 10}, {"i": 11}, {"i": 12}])
    second.finish("leaf")
    assert second.result()["default"]["train"]["i"] == [10, 11, 12]


def test_begin_on_a_complete_leaf_removes_the_marker_first(tmp_path):
    writer = ParquetOutputWriter(tmp_path, ["leaf"])
    writer.begin("leaf")
    writer.write("leaf", [{"i": 1}])
    writer.finish("leaf")
    assert writer.is_complete("leaf")
    writer.begin("leaf")
    assert not writer.is_complete("leaf")
    assert _files(tmp_path / "leaf") == []


def test_flush_writes_buffered_rows(tmp_path):
    writer = ParquetOutputWriter(tmp_path, ["a", "b"], rows_per_file=100)
    for leaf in ("a", "b"):
        writer.begin(leaf)
        writer.write(leaf, [{"i": 1}, {"i": 2}])
    writer.flush()
    assert writer.buffered_rows == {"a": 0, "b": 0}
    assert _files(tmp_path / "a") == _files(tmp_path / "b") == ["00000.parquet"]
    writer.write("a", [{"i": 3}])
    writer.finish("a")
    assert _files(tmp_path / "a") == ["00000.parquet", "00001.parquet", COMPLETE_MARKER]


def test_a_leaf_without_rows_gives_an_empty_dataset(tmp_path):
    writer = ParquetOutputWriter(tmp_path, ["empty", "full"])
    writer.begin("empty")
    writer.begin("full")
    writer.write("full", [{"i": 1}])
    writer.finish("empty")
    writer.finish("full")
    assert writer.is_complete("empty")
    distiset = writer.result()
    assert len(distiset["empty"]["train"]) == 0
    assert distiset["full"]["train"]["i"] == [1]


def test_write_before_begin_is_an_engine_error(tmp_path):
    writer = ParquetOutputWriter(tmp_path, ["leaf"])
    with pytest.raises(EngineError, match=r"'leaf' before `begin\('leaf'\)`"):
        writer.write("leaf", [{"i": 1}])


def test_rows_with_other_keys_fill_the_missing_values_with_none(tmp_path):
    writer = ParquetOutputWriter(tmp_path, ["leaf"])
    writer.begin("leaf")
    # One row lacks a key another has: as many keys each, and with one key fewer.
    writer.write("leaf", [{"x": 1, "y": "a"}, {"x": 2, "z": "b"}, {"x": 3}])
    writer.finish("leaf")
    train = writer.result()["default"]["train"]
    assert train.column_names == ["x", "y", "z"]
    assert train.to_list() == [
        {"x": 1, "y": "a", "z": None}, {"x": 2, "y": None, "z": "b"}, {"x": 3, "y": None, "z": None},
    ]


def test_mixed_types_in_a_column_name_the_leaf_and_column(tmp_path):
    writer = ParquetOutputWriter(tmp_path, ["leaf"])
    writer.begin("leaf")
    with pytest.raises(LeafSchemaError, match=r"'leaf'.*column 'value' \(dict, str\)"):
        writer.write("leaf", [{"value": "text"}, {"value": {"a": 1}}])
    writer.write("leaf", [{"value": 1}])
    writer.flush()  # the conflict is caught at the batch, even across files
    with pytest.raises(LeafSchemaError, match=r"'leaf'.*changed between batches.*value"):
        writer.write("leaf", [{"value": "text"}])
    writer.write("leaf", [{"value": None}, {"value": 2.5}])  # None and widening are fine
    writer.finish("leaf")
    assert writer.result()["default"]["train"]["value"] == [1.0, None, 2.5]


def test_without_data_dir_the_writer_owns_a_temporary_folder(tmp_path):
    writer = ParquetOutputWriter(None, ["leaf"])
    writer.begin("leaf")
    writer.write("leaf", [{"i": 1}])
    writer.finish("leaf")
    assert os.path.isdir(os.path.join(writer.data_dir, "leaf"))
    distiset = writer.result()
    assert distiset["default"]["train"]["i"] == [1]
    assert distiset.pipeline_path is None
    folder = os.path.dirname(writer.data_dir)
    del writer
    gc.collect()
    assert os.path.isdir(folder), "the Distiset's files must outlive the writer"
    del distiset
    gc.collect()
    assert not os.path.exists(folder)


def test_writes_to_an_fsspec_url(tmp_path):
    import fsspec

    url = "memory://writer-test/run/data"
    writer = ParquetOutputWriter(url, ["leaf"], rows_per_file=2)
    writer.begin("leaf")
    writer.write("leaf", [{"i": i} for i in range(5)])
    writer.finish("leaf")
    fs = fsspec.filesystem("memory")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/writer-test/run/data/leaf", detail=False))
    assert names == ["00000.parquet", "00001.parquet", "00002.parquet", COMPLETE_MARKER]
    assert writer.is_complete("leaf")
    assert writer.result()["default"]["train"]["i"] == list(range(5))
    fs.rm("/writer-test", recursive=True)


def test_rejects_a_bad_rows_per_file(tmp_path):
    with pytest.raises(ValueError, match="rows_per_file must be at least 1, got 0"):
        ParquetOutputWriter(tmp_path, ["leaf"], rows_per_file=0)


def _finished(tmp_path, version: str = "v1") -> ParquetOutputWriter:
    writer = ParquetOutputWriter(tmp_path, ["leaf"], rows_per_file=3)
    writer.begin("leaf", version)
    writer.write("leaf", [{"i": i, "s": f"row {i}"} for i in range(7)])
    writer.finish("leaf")
    return writer


def test_a_leaf_is_complete_only_for_the_stored_outputs_that_made_it(tmp_path):
    _finished(tmp_path, "sig:gen-a")
    again = ParquetOutputWriter(tmp_path, ["leaf"])
    assert again.is_complete("leaf", "sig:gen-a")
    assert not again.is_complete("leaf", "sig:gen-b")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "extra"])
def test_damaged_or_changed_files_make_a_leaf_incomplete(tmp_path, damage):
    _finished(tmp_path)
    path = tmp_path / "leaf" / "00001.parquet"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[:-20]))
    elif damage == "flip":
        data[len(data) // 3] ^= 0xFF  # inside a data page: only the page checksum sees it
        path.write_bytes(bytes(data))
    elif damage == "delete":
        path.unlink()
    else:
        (tmp_path / "leaf" / "00009.parquet").write_bytes(bytes(data))
    assert not ParquetOutputWriter(tmp_path, ["leaf"]).is_complete("leaf", "v1")


def test_a_damaged_unified_file_is_rebuilt_and_a_damaged_parquet_file_is_named(tmp_path):
    from stillhouse.core.errors import CorruptCacheError
    from stillhouse.distiset import create_distiset

    _finished(tmp_path)
    expected = create_distiset(tmp_path)["default"]["train"].to_list()
    unified = next((tmp_path / "leaf").glob(".unified-*.arrow"))
    unified.write_bytes(unified.read_bytes()[: unified.stat().st_size // 2])
    assert create_distiset(tmp_path)["default"]["train"].to_list() == expected
    data = bytearray(unified.read_bytes())
    data[-100] ^= 0xFF
    unified.write_bytes(bytes(data))
    assert create_distiset(tmp_path)["default"]["train"].to_list() == expected
    parquet = tmp_path / "leaf" / "00000.parquet"
    data = bytearray(parquet.read_bytes())
    data[len(data) // 3] ^= 0xFF
    parquet.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError, match=r"00000\.parquet") as info:
        create_distiset(tmp_path)
    assert "Run the pipeline again" in str(info.value)


def test_a_result_file_replaced_after_its_leaf_finished_is_named_and_not_read(tmp_path):
    from stillhouse.core.errors import CorruptCacheError
    from stillhouse.distiset import create_distiset

    _finished(tmp_path)
    leaf = tmp_path / "leaf"
    # A valid Parquet file (its page checksums hold) with other rows than _COMPLETE recorded.
    (leaf / "00000.parquet").write_bytes((leaf / "00001.parquet").read_bytes())
    with pytest.raises(CorruptCacheError, match=r"00000\.parquet.*recorded in _COMPLETE"):
        create_distiset(tmp_path)
    assert sorted(p.name for p in leaf.iterdir() if p.name.startswith(".")) == []  # no unified file, no temporary


def _big_rows(start: int, count: int) -> list[dict]:
    return [{"i": i, "text": f"{i:08d}" + "b" * 6000} for i in range(start, start + count)]


def test_large_files_are_written_beside_the_run_and_all_there_at_finish(tmp_path):
    from stillhouse.distiset.writer import BACKGROUND_FROM

    writer = ParquetOutputWriter(tmp_path, ["leaf"], rows_per_file=1000)
    writer.begin("leaf")
    for start in range(0, 3500, 500):  # 1,000 rows of 6 KB: each file is written in the background
        writer.write("leaf", _big_rows(start, 500))
    assert BACKGROUND_FROM <= 1000 * 6000
    writer.finish("leaf")
    names = _files(tmp_path / "leaf")
    assert names == [f"{n:05d}.parquet" for n in range(4)] + [COMPLETE_MARKER]
    marker = json.loads((tmp_path / "leaf" / COMPLETE_MARKER).read_bytes())
    assert marker["rows"] == 3500 and sorted(marker["sizes"]) == names[:-1]
    assert all(marker["sizes"][n] == os.path.getsize(tmp_path / "leaf" / n) for n in names[:-1])
    assert writer.result()["default"]["train"]["i"] == list(range(3500))


def test_a_background_write_that_fails_is_raised_by_the_writer(tmp_path, monkeypatch):
    writer = ParquetOutputWriter(tmp_path, ["leaf"], rows_per_file=1000)
    writer.begin("leaf")
    monkeypatch.setattr(pq, "write_table", _explode)
    with pytest.raises(OSError, match="disk full"):
        for start in range(0, 5000, 500):
            writer.write("leaf", _big_rows(start, 500))
        writer.finish("leaf")
    assert not any(name.endswith((".parquet", ".tmp")) for name in os.listdir(tmp_path / "leaf"))
    assert COMPLETE_MARKER not in os.listdir(tmp_path / "leaf")


def test_result_files_are_written_in_pieces_and_hashed_whole():
    import xxhash

    from stillhouse.core.files import WRITE_PIECE
    from stillhouse.distiset._storage import HashingWriter

    class Recording:
        def __init__(self) -> None:
            self.sizes: list[int] = []
            self.data = bytearray()

        def write(self, data) -> int:
            self.sizes.append(memoryview(data).nbytes)
            self.data += data
            return memoryview(data).nbytes

    payload = os.urandom(WRITE_PIECE * 2 + 10)
    handle, digest = Recording(), xxhash.xxh3_64()
    assert HashingWriter(handle, digest).write(payload) == len(payload)
    assert handle.sizes == [WRITE_PIECE, WRITE_PIECE, 10]
    assert bytes(handle.data) == payload
    assert digest.hexdigest() == xxhash.xxh3_64(payload).hexdigest()
