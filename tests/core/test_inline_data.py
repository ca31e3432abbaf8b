"""Inline rows (LoadDataFromDicts, make_generator_step) are written beside a saved
pipeline file, once, by hash; the file refers to them and reloads with them."""

from __future__ import annotations

import json

import pytest
import yaml

from stillhouse.core import Pipeline, make_generator_step
from stillhouse.core.errors import SerializationError
from stillhouse.core.inline_data import inline_fields
from stillhouse.core.steps import KeepColumns, LoadDataFromDicts

ROWS = [{"id": i, "text": f"row {i}", "tags": ["a", "b"], "score": i / 3} for i in range(2000)]


def build(rows=ROWS, name="inline"):
    with Pipeline(name=name) as pipeline:
        LoadDataFromDicts(name="load", data=rows, batch_size=100) >> KeepColumns(
            name="keep", columns=["id"]
        )
    return pipeline


try:
    import pyarrow  # noqa: F401

    SUFFIX = ".parquet"  # what rows that round-trip through Parquet are written as
except ImportError:  # stillhouse-core alone: JSON
    SUFFIX = ".json"


def data_files(folder):
    return sorted((folder / "inline_data").glob("*"))


def read_rows(data_file):
    if data_file.suffix == ".json":
        return json.loads(data_file.read_bytes())
    import pyarrow.parquet as pq

    return pq.read_table(data_file).to_pylist()


def test_save_writes_the_rows_beside_the_file_and_from_yaml_reads_them(tmp_path):
    path = tmp_path / "pipeline.yaml"
    build().save(path)
    step = yaml.safe_load(path.read_text())["pipeline"]["steps"][0]["step"]
    [data_file] = data_files(tmp_path)
    assert data_file.suffix == SUFFIX
    assert {k: v for k, v in step["data"].items() if k != "file_sha256"} == {
        "inline_data": f"inline_data/{data_file.name}",
        "sha256": data_file.stem,
        "rows": len(ROWS),
    }
    assert path.stat().st_size < 5_000
    assert read_rows(data_file) == ROWS
    reloaded = Pipeline.from_yaml(path)
    assert reloaded.dag.get_step("load").data == ROWS


def test_saving_again_rewrites_no_data_file(tmp_path):
    path = tmp_path / "pipeline.yaml"
    build().save(path)
    [data_file] = data_files(tmp_path)
    stamp = data_file.stat().st_mtime_ns
    build().save(path)
    assert data_files(tmp_path) == [data_file]
    assert data_file.stat().st_mtime_ns == stamp
    build([*ROWS, {"id": -1}]).save(path)  # other rows: another file
    assert len(data_files(tmp_path)) == 2


def test_a_changed_or_missing_data_file_is_a_clear_error(tmp_path):
    path = tmp_path / "pipeline.yaml"
    build().save(path)
    [data_file] = data_files(tmp_path)
    data_file.write_bytes(data_file.read_bytes()[:-1] + b"!")  # one byte changed
    with pytest.raises(SerializationError, match=r"Step 'load'.*'data'.*changed or damaged"):
        Pipeline.from_yaml(path)
    data_file.unlink()
    with pytest.raises(SerializationError, match=r"is missing.*Copy the inline_data/ folder"):
        Pipeline.from_yaml(path)


def test_references_cannot_leave_the_pipeline_folder(tmp_path):
    path = tmp_path / "pipeline.yaml"
    build().save(path)
    text = path.read_text().replace("inline_data: inline_data/", "inline_data: ../")
    path.write_text(text)
    with pytest.raises(SerializationError, match=r"outside the pipeline's folder"):
        Pipeline.from_yaml(path)


def test_dump_without_a_folder_keeps_the_rows_and_round_trips():
    dumped = build().dump()
    assert dumped["pipeline"]["steps"][0]["step"]["data"] == ROWS
    assert Pipeline.from_dict(dumped).dag.get_step("load").data == ROWS


def test_a_reference_without_a_folder_is_an_error(tmp_path):
    dumped = build().dump(inline_dir=tmp_path)
    with pytest.raises(SerializationError, match=r"no folder to find it in"):
        Pipeline.from_dict(dumped)
    assert Pipeline.from_dict(dumped, base=tmp_path).dag.get_step("load").data == ROWS


def test_the_rows_hash_stands_in_for_them_in_the_signature():
    step = LoadDataFromDicts(data=ROWS)
    assert inline_fields(step) == ["data"]
    extra = step.signature_extra()
    assert set(extra) == {"data"} and extra["data"].startswith("sha256:")
    assert LoadDataFromDicts(data=list(ROWS)).signature_extra() == extra
    step.data = ROWS[:10]  # a new list: hashed again
    assert step.signature_extra() != extra
    assert make_generator_step(ROWS).signature_extra() == extra


def test_a_url_base(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    build().save(tmp_path / "pipeline.yaml")
    fs = fsspec.filesystem("memory")
    fs.put(str(tmp_path), "/inline-url", recursive=True)
    try:
        reloaded = Pipeline.from_yaml("memory://inline-url/pipeline.yaml")
        assert reloaded.dag.get_step("load").data == ROWS
    finally:
        fs.rm("/inline-url", recursive=True)


needs_pyarrow = pytest.mark.skipif(SUFFIX != ".parquet", reason="stillhouse-core alone writes JSON")


@needs_pyarrow
@pytest.mark.parametrize(
    "rows",
    [
        [{"a": 1}, {"b": 2}],  # keys that differ from row to row would come back as None
        [{"x": 1}, {"x": 1.5}],  # a column of ints and floats would come back as floats
        [{"x": 1}, {"x": "one"}],  # no Arrow type holds both
        [{"n": {"a": 1}}, {"n": {"b": 2}}],  # nested dicts: struct fields filled with None
        [{"big": 2**70}],  # beyond int64
    ],
)
def test_rows_parquet_would_change_are_written_as_json_and_come_back_exactly(tmp_path, rows):
    path = tmp_path / "pipeline.yaml"
    build(rows).save(path)
    [data_file] = data_files(tmp_path)
    assert data_file.suffix == ".json"
    assert Pipeline.from_yaml(path).dag.get_step("load").data == rows


@needs_pyarrow
def test_dates_are_written_as_json_with_the_same_signature(tmp_path):
    """Arrow reads a date's ISO text back as a timestamp: Parquet would change it."""
    import datetime

    rows = [{"day": datetime.date(2026, 12, 1), "at": datetime.datetime(2026, 12, 1, 7, 30)}]
    path = tmp_path / "pipeline.yaml"
    pipeline = build(rows)
    pipeline.save(path)
    assert [f.suffix for f in data_files(tmp_path)] == [".json"]
    reloaded = Pipeline.from_yaml(path).dag.get_step("load")
    assert reloaded.data == [{"day": "2026-12-01", "at": "2026-12-01T07:30:00"}]
    assert reloaded.signature_extra() == pipeline.dag.get_step("load").signature_extra()


@needs_pyarrow
def test_a_parquet_file_is_checked_before_it_is_parsed(tmp_path):
    """Its bytes' hash is in the reference: a swapped file is refused unread, even one
    whose rows are the same (another encoding of them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pipeline.yaml"
    build().save(path)
    [data_file] = data_files(tmp_path)
    pq.write_table(pa.Table.from_pylist(ROWS), data_file, compression="gzip")  # same rows
    with pytest.raises(SerializationError, match=r"Step 'load'.*changed or damaged"):
        Pipeline.from_yaml(path)
