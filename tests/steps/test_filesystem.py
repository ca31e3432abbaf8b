"""LoadDataFromFileSystem over real files: local, memory:// and S3 (a moto server)."""

from __future__ import annotations

import csv
import json
import os
import re

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


# -- the same process, run again ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("executor", ["threaded", "mp"])
def test_the_same_pipeline_run_again_reads_a_file_added_to_the_glob(tmp_path, executor):
    needs_full_install()
    from stillhouse.core import Pipeline

    folder = tmp_path / "parts"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", ROWS[:3])
    with Pipeline(name="rerun", cache_dir=str(tmp_path / "cache"), executor=executor) as pipeline:
        LoadDataFromFileSystem(name="files", data_files=str(folder / "*.jsonl"), batch_size=2)
    assert pipeline.run(progress=False)["default"]["train"].to_list() == ROWS[:3]
    write_jsonl(folder / "b.jsonl", ROWS[3:])
    assert pipeline.run(progress=False)["default"]["train"].to_list() == ROWS
    assert [row["status"] for row in pipeline.last_run_summary] == ["computed"]


@pytest.mark.integration
def test_a_same_size_rewrite_with_the_old_mtime_is_read_again(tmp_path):
    """What `cp -p`, `rsync -t`, `tar x` or `unzip` give: new rows, same size, same mtime."""
    needs_full_install()
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "cat"}\n{"text": "dog"}\n')
    before = os.stat(path)

    def loader():
        return LoadDataFromFileSystem(name="files", data_files=str(path))

    cache = tmp_path / "cache"
    assert run_loader(loader, cache) == ([{"text": "cat"}, {"text": "dog"}], {"files"})
    path.write_text('{"text": "owl"}\n{"text": "eel"}\n')
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns  # a run lies between: a later clock tick
    assert run_loader(loader, cache) == ([{"text": "owl"}, {"text": "eel"}], {"files"})


def test_a_file_replaced_by_another_of_the_same_size_and_mtime_changes_the_signature(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "cat"}\n')
    loader = LoadDataFromFileSystem(data_files=str(path))
    first = loader.signature_extra()
    stat = os.stat(path)
    other = tmp_path / "other.tmp"
    other.write_text('{"text": "owl"}\n')
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    keep = tmp_path / "keep.tmp"
    os.link(path, keep)  # the old file stays alive: its inode cannot be reused
    os.replace(other, path)  # an atomic save
    assert loader.signature_extra() != first


# -- other filesystems -----------------------------------------------------------------


def test_s3_a_file_added_or_rewritten_in_the_same_process_is_read(s3_as_users_have_it):
    options, fs = s3_as_users_have_it
    fs.pipe("stillhouse-steps/grow/part-0.jsonl", b'{"text": "a0"}\n{"text": "a1"}\n')
    loader = LoadDataFromFileSystem(data_files="s3://stillhouse-steps/grow/*.jsonl",
                                    storage_options=options)
    first = loader.signature_extra()
    assert rows_of(loader) == [{"text": "a0"}, {"text": "a1"}]
    fs.pipe("stillhouse-steps/grow/part-1.jsonl", b'{"text": "b0"}\n')  # added
    added = loader.signature_extra()
    assert len(added["files"]) == 2 and added != first
    assert rows_of(loader) == [{"text": "a0"}, {"text": "a1"}, {"text": "b0"}]
    fs.pipe("stillhouse-steps/grow/part-0.jsonl", b'{"text": "A0"}\n{"text": "A1"}\n')  # rewritten
    assert loader.signature_extra() != added
    assert rows_of(loader) == [{"text": "A0"}, {"text": "A1"}, {"text": "b0"}]


@pytest.mark.integration
def test_s3_the_same_pipeline_run_again_reads_a_file_added_to_the_glob(s3_as_users_have_it, tmp_path):
    needs_full_install()
    from stillhouse.core import Pipeline

    options, fs = s3_as_users_have_it
    fs.pipe("stillhouse-steps/rerun/part-0.jsonl", b'{"text": "a0"}\n')
    with Pipeline(name="s3-rerun", cache_dir=str(tmp_path / "cache")) as pipeline:
        LoadDataFromFileSystem(name="files", data_files="s3://stillhouse-steps/rerun/*.jsonl",
                               storage_options=options)
    assert pipeline.run(progress=False)["default"]["train"].to_list() == [{"text": "a0"}]
    fs.pipe("stillhouse-steps/rerun/part-1.jsonl", b'{"text": "b0"}\n')
    rows = pipeline.run(progress=False)["default"]["train"].to_list()
    assert rows == [{"text": "a0"}, {"text": "b0"}]


def test_hf_files_are_fingerprinted_by_their_blob(hub):
    hub.publish("tester/files", {"README.md": b"# files\n", "data/part-0.jsonl": b'{"text": "cat"}\n'})
    loader = LoadDataFromFileSystem(data_files="hf://datasets/tester/files/data/*.jsonl")
    first = loader.signature_extra()["files"]
    assert rows_of(loader) == [{"text": "cat"}]
    hub.publish("tester/files", {"README.md": b"# files\n", "data/part-0.jsonl": b'{"text": "owl"}\n'})
    second = loader.signature_extra()["files"]
    assert second[0][1] == first[0][1]  # the same size
    assert second != first
    assert rows_of(loader) == [{"text": "owl"}]


def test_a_filesystem_without_change_stamps_is_fingerprinted_by_content():
    from fsspec.implementations.memory import MemoryFileSystem

    from stillhouse.steps._files import fingerprint

    class NoStamps(MemoryFileSystem):
        def info(self, path, **kwargs):
            return {k: v for k, v in super().info(path, **kwargs).items() if k != "created"}

    fs = NoStamps()
    try:
        fs.pipe("/no-stamps/data.jsonl", b'{"text": "cat"}\n')
        first = fingerprint(fs, ["/no-stamps/data.jsonl"])
        fs.pipe("/no-stamps/data.jsonl", b'{"text": "owl"}\n')
        second = fingerprint(fs, ["/no-stamps/data.jsonl"])
    finally:
        fs.rm("/no-stamps", recursive=True)
    assert first[0][1] == second[0][1] and first != second
    assert set(first[0][2]) == {"sha256"}


# -- bad input ---------------------------------------------------------------------------


def test_an_empty_file_holds_no_rows(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    empty = LoadDataFromFileSystem(data_files=str(tmp_path / "empty.jsonl"), batch_size=3)
    assert empty.outputs == []
    assert run_generator(empty) == [[]]
    write_jsonl(tmp_path / "full.jsonl", ROWS)
    (tmp_path / "more.csv").write_text("")
    globbed = LoadDataFromFileSystem(data_files=str(tmp_path / "*.jsonl"))
    assert globbed.outputs == ["text", "n"]
    assert rows_of(globbed) == ROWS


def test_a_bad_json_line_is_an_error_naming_step_file_and_fix(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    loader = LoadDataFromFileSystem(name="files", data_files=str(bad))
    with pytest.raises(StepRuntimeError, match=r"(?s)'files'.*bad\.jsonl.*as json: ArrowInvalid: "
                                               r"JSON parse error.*filetype="):
        loader.outputs  # noqa: B018  (what validation reads)
    wrong = LoadDataFromFileSystem(name="typed", data_files=str(bad), filetype="parquet")
    with pytest.raises(StepRuntimeError, match=r"'typed'.*bad\.jsonl.*as parquet.*"
                                               r"filetype='parquet' says so"):
        wrong.outputs  # noqa: B018


def test_a_bad_file_found_while_reading_is_an_error_naming_step_and_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.jsonl").write_text("{not json\n")
    loader = LoadDataFromFileSystem(name="files", data_files=str(tmp_path / "*.jsonl"))
    assert loader.outputs == ["text", "n"]  # the first file is fine
    with pytest.raises(Exception) as raised:  # the runner wraps it in a FatalStepError
        run_generator(loader)
    assert isinstance(raised.value.__cause__, StepRuntimeError)
    assert re.search(r"'files'.*a\.jsonl.*b\.jsonl.*ArrowInvalid.*filetype=", str(raised.value.__cause__))


@pytest.mark.integration
def test_a_bad_file_stops_the_run_before_any_worker_starts(tmp_path):
    needs_full_install()
    (tmp_path / "bad.jsonl").write_text("{not json\n")

    def loader():
        return LoadDataFromFileSystem(name="files", data_files=str(tmp_path / "bad.jsonl"))

    with pytest.raises(StepRuntimeError, match=r"'files'.*bad\.jsonl.*ArrowInvalid"):
        run_loader(loader, tmp_path / "cache")


def test_validation_reads_the_files_once_and_again_when_they_change(tmp_path, monkeypatch):
    from stillhouse.core import Pipeline
    from stillhouse.core.steps import KeepColumns

    peeks = []
    peek = LoadDataFromFileSystem._peek
    monkeypatch.setattr(LoadDataFromFileSystem, "_peek", lambda self: peeks.append(1) or peek(self))
    path = tmp_path / "data.jsonl"
    write_jsonl(path, ROWS)
    with Pipeline(name="peeks") as pipeline:
        loader = LoadDataFromFileSystem(data_files=str(path))
        loader >> KeepColumns(columns=["text"]) >> KeepColumns(columns=["text"])
    pipeline.validate()
    assert len(peeks) == 1
    write_jsonl(path, [{"prompt": "p"}])
    assert loader.outputs == ["prompt"]
    assert len(peeks) == 2


def test_empty_and_hidden_files_do_not_decide_the_filetype(tmp_path):
    for folder, other in (("git", ".gitkeep"), ("spark", "_SUCCESS"), ("mixed", "a-placeholder.csv")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / other).write_text("")  # zero bytes: no rows, whatever its type
        write_jsonl(tmp_path / folder / "b.jsonl", ROWS)
        loader = LoadDataFromFileSystem(name="files", data_files=str(tmp_path / folder))
        assert loader.outputs == ["text", "n"], folder
        assert rows_of(loader) == ROWS, folder  # read as jsonl, not as the empty file's csv
    (tmp_path / "spark" / ".part-0.crc").write_bytes(b"\x00\x01crc")  # hidden: not data
    assert rows_of(LoadDataFromFileSystem(data_files=str(tmp_path / "spark"))) == ROWS
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.csv").write_text("")
    (tmp_path / "empty" / "b.jsonl").write_text("")
    only_empty = LoadDataFromFileSystem(data_files=str(tmp_path / "empty"))
    assert only_empty.outputs == []
    assert run_generator(only_empty) == [[]]


def test_files_of_different_types_are_an_error_naming_two_of_them_and_the_fix(tmp_path):
    with open(tmp_path / "a.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "n"])
        writer.writeheader()
        writer.writerows(ROWS)
    write_jsonl(tmp_path / "b.jsonl", ROWS)
    mixed = LoadDataFromFileSystem(name="files", data_files=str(tmp_path))
    with pytest.raises(StepRuntimeError, match=r"'files'.*different types: '.*a\.csv' \(csv\) and "
                                               r"'.*b\.jsonl' \(json\).*one type of file per step"
                                               r".*filetype="):
        mixed.outputs  # noqa: B018  (what validation reads)
    (tmp_path / "a.csv").unlink()
    (tmp_path / "c.json").write_text(json.dumps(ROWS))  # json and jsonl are one type
    assert rows_of(LoadDataFromFileSystem(data_files=str(tmp_path))) == ROWS + ROWS
    write_jsonl(tmp_path / "notes.txt", ROWS)
    unknown = LoadDataFromFileSystem(name="files", data_files=str(tmp_path))
    with pytest.raises(StepRuntimeError, match=r"'files'.*filetype 'txt'.*notes\.txt.*filetype="):
        unknown.signature_extra()
    told = LoadDataFromFileSystem(data_files=str(tmp_path / "*[lt]"), filetype="json")
    assert rows_of(told) == ROWS + ROWS  # filetype= reads b.jsonl and notes.txt alike


def test_files_whose_columns_differ_are_an_error_saying_so(tmp_path):
    write_jsonl(tmp_path / "part-0.jsonl", [{"text": "a"}])
    write_jsonl(tmp_path / "part-1.jsonl", [{"text": "b", "label": 1}])
    loader = LoadDataFromFileSystem(name="files", data_files=str(tmp_path / "*.jsonl"))
    with pytest.raises(Exception) as raised:  # the runner wraps it in a FatalStepError
        run_generator(loader)
    message = str(raised.value.__cause__)
    assert isinstance(raised.value.__cause__, StepRuntimeError)
    assert re.search(r"'files'.*part-0\.jsonl.*part-1\.jsonl", message)
    assert "columns differ: one has the columns ['text', 'label'], where the first rows read " \
           "had ['text']" in message
    assert "of the type read" not in message


def test_a_negative_num_examples_is_refused(tmp_path):
    from pydantic import ValidationError

    from stillhouse.core.errors import RuntimeParameterError

    write_jsonl(tmp_path / "data.jsonl", ROWS)
    with pytest.raises(ValidationError, match=r"num_examples\n.*greater than or equal to 0"):
        LoadDataFromFileSystem(data_files=str(tmp_path / "data.jsonl"), num_examples=-1)
    loader = LoadDataFromFileSystem(name="files", data_files=str(tmp_path / "data.jsonl"))
    with pytest.raises((ValidationError, RuntimeParameterError), match=r"greater than or equal to 0"):
        loader.set_runtime_parameters({"num_examples": -5})  # what run(parameters=...) does
    assert loader.num_examples is None
    assert rows_of(LoadDataFromFileSystem(data_files=str(tmp_path / "data.jsonl"), num_examples=0)) == []
