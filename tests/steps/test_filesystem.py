"""LoadDataFromFileSystem over real files: local, memory:// and S3 (a moto server)."""

from __future__ import annotations

import csv
import json
import os

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stillhouse.core.errors import StepRuntimeError
from stillhouse.core.testing import run_generator
from stillhouse.steps import LoadDataFromFileSystem
from tests.steps.helpers import needs_full_install, run_loader

pytestmark = pytest.mark.timeout(120)

ROWS = [{"text": f"line {i}", "n": i} for i in range(7)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def rows_of(loader, **kwargs):
    return [row for batch in run_generator(loader, **kwargs) for row in batch]


def test_jsonl_in_batches(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    loader = LoadDataFromFileSystem(data_files=str(tmp_path / "data.jsonl"), batch_size=3)
    assert [len(b) for b in run_generator(loader)] == [3, 3, 1]
    assert rows_of(loader) == ROWS
    assert loader.outputs == ["text", "n"]


def test_csv_parquet_and_json(tmp_path):
    with open(tmp_path / "data.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "n"])
        writer.writeheader()
        writer.writerows(ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "data.parquet")
    (tmp_path / "data.json").write_text(json.dumps(ROWS))
    for name in ("data.csv", "data.parquet", "data.json"):
        assert rows_of(LoadDataFromFileSystem(data_files=str(tmp_path / name))) == ROWS, name
    renamed = tmp_path / "rows.txt"
    renamed.write_text((tmp_path / "data.csv").read_text())
    assert rows_of(LoadDataFromFileSystem(data_files=str(renamed), filetype="csv")) == ROWS


def test_globs_and_folders_read_every_file_in_order(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", ROWS[4:])
    write_jsonl(folder / "a.jsonl", ROWS[:4])
    assert rows_of(LoadDataFromFileSystem(data_files=str(folder / "*.jsonl"))) == ROWS
    assert rows_of(LoadDataFromFileSystem(data_files=str(folder))) == ROWS
    assert rows_of(LoadDataFromFileSystem(data_files=folder)) == ROWS  # a Path too


def test_num_examples_and_offset(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    limited = LoadDataFromFileSystem(data_files=str(tmp_path / "data.jsonl"), num_examples=4,
                                     batch_size=3)
    assert [r["n"] for r in rows_of(limited)] == [0, 1, 2, 3]
    whole = LoadDataFromFileSystem(data_files=str(tmp_path / "data.jsonl"), batch_size=3)
    assert [r["n"] for r in rows_of(whole, offset=3)] == [3, 4, 5, 6]


def test_memory_filesystem():
    fs = fsspec.filesystem("memory")
    fs.pipe("/steps-fs/data.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS).encode())
    try:
        assert rows_of(LoadDataFromFileSystem(data_files="memory://steps-fs/*.jsonl")) == ROWS
    finally:
        fs.rm("/steps-fs", recursive=True)


def test_s3(s3):
    s3.pipe("stillhouse-steps/in/part-0.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS[:5]).encode())
    s3.pipe("stillhouse-steps/in/part-1.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS[5:]).encode())
    loader = LoadDataFromFileSystem(data_files="s3://stillhouse-steps/in/*.jsonl", batch_size=4)
    assert rows_of(loader) == ROWS
    before = loader.signature_extra()["files"]
    assert [entry[0] for entry in before] == ["stillhouse-steps/in/part-0.jsonl",
                                              "stillhouse-steps/in/part-1.jsonl"]
    s3.pipe("stillhouse-steps/in/part-1.jsonl", b'{"text": "other", "n": 9}\n')
    assert loader.signature_extra()["files"] != before


def test_a_changed_file_changes_the_signature(tmp_path):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, ROWS)
    loader = LoadDataFromFileSystem(data_files=str(path))
    first = loader.signature_extra()
    assert first == loader.signature_extra()
    write_jsonl(path, ROWS)  # same size, same content: a later mtime still counts
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert loader.signature_extra() != first
    write_jsonl(tmp_path / "more.jsonl", ROWS)
    globbed = LoadDataFromFileSystem(data_files=str(tmp_path / "*.jsonl"))
    size = len(globbed.signature_extra()["files"])
    (tmp_path / "more.jsonl").unlink()
    assert len(globbed.signature_extra()["files"]) == size - 1


def test_no_matching_file_is_an_error_naming_the_step_and_path(tmp_path):
    loader = LoadDataFromFileSystem(name="files", data_files=str(tmp_path / "nothing*.jsonl"))
    with pytest.raises(StepRuntimeError, match=r"'files'.*nothing\*\.jsonl.*matches no file"):
        loader.signature_extra()
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(StepRuntimeError, match=r"filetype 'xml'"):
        LoadDataFromFileSystem(data_files=str(tmp_path / "data.xml")).signature_extra()


@pytest.mark.integration
def test_a_changed_file_is_read_again_and_an_unchanged_one_comes_from_the_cache(tmp_path):
    needs_full_install()
    path = tmp_path / "data.jsonl"
    write_jsonl(path, ROWS)

    def loader():
        return LoadDataFromFileSystem(name="files", data_files=str(path), batch_size=3)

    cache = tmp_path / "cache"
    assert run_loader(loader, cache) == (ROWS, {"files"})
    assert run_loader(loader, cache) == (ROWS, set())
    write_jsonl(path, ROWS[:2])
    assert run_loader(loader, cache) == (ROWS[:2], {"files"})


@pytest.mark.integration
def test_missing_files_fail_before_the_run_and_leave_the_cache_usable(tmp_path):
    needs_full_install()
    path = tmp_path / "later.jsonl"

    def loader():
        return LoadDataFromFileSystem(name="files", data_files=str(path))

    with pytest.raises(StepRuntimeError, match=r"matches no file"):
        run_loader(loader, tmp_path / "cache")
    write_jsonl(path, ROWS)
    assert run_loader(loader, tmp_path / "cache") == (ROWS, {"files"})
