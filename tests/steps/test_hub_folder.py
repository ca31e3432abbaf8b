"""LoadDataFromHub with `repo_id` naming a local folder (as `datasets.load_dataset`
reads one): real files under tmp_path, no Hub, the files' fingerprint pinned in the
signature instead of a commit."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest

from stillhouse.core.errors import StepRuntimeError
from stillhouse.core.testing import run_generator
from stillhouse.steps import LoadDataFromHub
from tests.steps.conftest import parquet_bytes
from tests.steps.helpers import needs_full_install, run_loader

pytestmark = pytest.mark.timeout(120)

ROWS = [{"text": f"t{i}", "n": i} for i in range(7)]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def rows_of(loader, **kwargs):
    return [row for batch in run_generator(loader, **kwargs) for row in batch]


def rewrite_keeping_size_and_mtime(path, text):
    """What `cp -p`, `rsync -t` or `tar x` give: new content, same size, the old mtime."""
    before = os.stat(path)
    assert len(text.encode()) == before.st_size
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.fixture
def folder(tmp_path):
    repo = tmp_path / "repo"
    write_jsonl(repo / "train.jsonl", ROWS)
    write_jsonl(repo / "test.jsonl", ROWS[:2])
    return repo


@pytest.mark.parametrize("streaming", [False, True])
def test_a_local_folder_is_loaded_from_disk(folder, streaming):
    loader = LoadDataFromHub(repo_id=str(folder), batch_size=3, streaming=streaming)
    batches = run_generator(loader)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [row for b in batches for row in b] == ROWS
    assert loader.outputs == ["text", "n"]
    test_split = LoadDataFromHub(repo_id=str(folder), split="test", streaming=streaming)
    assert rows_of(test_split) == ROWS[:2]


@pytest.mark.parametrize("streaming", [False, True])
def test_num_examples_and_offset(folder, streaming):
    limited = LoadDataFromHub(repo_id=str(folder), num_examples=3, batch_size=2, streaming=streaming)
    assert run_generator(limited) == [ROWS[:2], ROWS[2:3]]
    resumed = LoadDataFromHub(repo_id=str(folder), batch_size=4, streaming=streaming)
    assert rows_of(resumed, offset=5) == ROWS[5:]


def test_data_files_in_subfolders_and_a_config_of_the_readme(tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train-00000-of-00001.parquet").write_bytes(parquet_bytes(ROWS[:3]))
    (repo / "extra").mkdir()
    (repo / "extra" / "train-0.parquet").write_bytes(parquet_bytes([{"other": "x"}]))
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: main\n  data_files:\n  - split: train\n    path: data/*.parquet\n"
        "- config_name: extra\n  data_files:\n  - split: train\n    path: extra/*.parquet\n"
        "---\n"
    )
    assert rows_of(LoadDataFromHub(repo_id=str(repo), config="main")) == ROWS[:3]
    extra = LoadDataFromHub(repo_id=str(repo), config="extra")
    assert rows_of(extra) == [{"other": "x"}]
    assert extra.outputs == ["other"]


def test_a_relative_name_is_a_folder_only_when_one_exists(tmp_path, monkeypatch, hub):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "tester" / "local" / "train.jsonl", ROWS[:2])
    assert rows_of(LoadDataFromHub(repo_id="tester/local")) == ROWS[:2]
    assert not hub.requests  # the folder won: no Hub request
    hub.publish("tester/mini", {"data/train-0.parquet": parquet_bytes(ROWS[2:4])})
    remote = LoadDataFromHub(repo_id="tester/mini")
    assert rows_of(remote) == ROWS[2:4]  # no such folder: the Hub
    assert remote.signature_extra()["revision"] == hub.repos["tester/mini"].sha


def test_the_files_fingerprint_is_the_pin(folder):
    loader = LoadDataFromHub(repo_id=str(folder))
    first = loader.signature_extra()
    assert first == loader.signature_extra()  # unchanged folder: the same signature
    assert sorted(entry[0] for entry in first["files"]) == [
        str(folder / "test.jsonl"), str(folder / "train.jsonl"),
    ]
    rewrite_keeping_size_and_mtime(folder / "test.jsonl", (folder / "test.jsonl").read_text().replace("t1", "x1"))
    second = loader.signature_extra()
    assert second != first
    write_jsonl(folder / "nested" / "more.jsonl", ROWS[:1])  # a file added anywhere under it
    assert loader.signature_extra() != second


def test_a_same_size_rewrite_with_the_old_mtime_is_read_again(folder):
    """`datasets` keys its prepared copy of local files by their mtime: the loader must
    not answer from it."""
    loader = LoadDataFromHub(repo_id=str(folder), batch_size=50)
    assert rows_of(loader) == ROWS
    path = folder / "train.jsonl"
    rewrite_keeping_size_and_mtime(path, path.read_text().replace(': "t', ': "x'))
    assert rows_of(loader) == [{"text": f"x{i}", "n": i} for i in range(7)]


def test_a_revision_is_ignored_with_a_warning_as_datasets_does(folder, caplog):
    plain = LoadDataFromHub(name="local", repo_id=str(folder))
    pinned = LoadDataFromHub(name="local", repo_id=str(folder), revision="v1.0")
    with caplog.at_level(logging.WARNING, logger="stillhouse.step.local"):
        assert pinned.signature_extra() == plain.signature_extra()
        pinned.signature_extra()
    warnings = [r.getMessage() for r in caplog.records if "revision" in r.getMessage()]
    assert len(warnings) == 1  # once, not at every look at the signature
    assert "'local'" in warnings[0] and "'v1.0'" in warnings[0] and str(folder) in warnings[0]
    assert rows_of(pinned) == ROWS


def test_an_empty_folder_is_an_error_naming_step_folder_and_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    loader = LoadDataFromHub(name="local", repo_id=str(tmp_path / "empty"))
    with pytest.raises(StepRuntimeError, match=r"'local'.*empty'.* no files.*Put the data files"):
        loader.signature_extra()


def test_a_folder_without_data_files_is_an_error_naming_step_folder_and_fix(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.bin").write_bytes(b"\x00\x01")
    loader = LoadDataFromHub(name="local", repo_id=str(tmp_path / "notes"))
    with pytest.raises(StepRuntimeError, match=r"'local'.*notes'.*DataFilesNotFoundError.*parquet"):
        loader.outputs  # noqa: B018


def test_an_unknown_split_is_an_error_listing_the_splits(folder):
    loader = LoadDataFromHub(name="local", repo_id=str(folder), split="validation")
    with pytest.raises(StepRuntimeError, match=r"'local'.*'validation'.*repo'.*test.*train"):
        loader.outputs  # noqa: B018


@pytest.mark.parametrize("streaming", [False, True])
def test_a_bad_file_is_an_error_naming_step_folder_and_fix(folder, streaming):
    (folder / "train.jsonl").write_text('{"text": "ok"}\nnot json\n')
    loader = LoadDataFromHub(name="local", repo_id=str(folder), streaming=streaming)
    expected = r"'local'.*repo'.*ArrowInvalid: JSON parse error.*fix or remove the bad file"
    with pytest.raises(StepRuntimeError, match=expected):
        loader.outputs  # noqa: B018  (what validation reads)
    with pytest.raises(Exception) as raised:  # the runner wraps it in a FatalStepError
        run_generator(loader)
    assert isinstance(raised.value.__cause__, StepRuntimeError)
    assert re.search(expected, str(raised.value.__cause__))


def test_a_broken_link_is_skipped_as_datasets_skips_it(folder):
    (folder / "gone.jsonl").symlink_to(folder / "nowhere.jsonl")
    loader = LoadDataFromHub(repo_id=str(folder))
    assert str(folder / "gone.jsonl") not in [entry[0] for entry in loader.signature_extra()["files"]]
    assert rows_of(loader) == ROWS


@pytest.mark.integration
@pytest.mark.parametrize("executor", ["threaded", "mp"])
def test_a_changed_folder_is_read_again_and_an_unchanged_one_comes_from_the_cache(folder, tmp_path, executor):
    needs_full_install()

    def loader():
        return LoadDataFromHub(name="hub", repo_id=str(folder), batch_size=3)

    cache = tmp_path / "cache"
    assert run_loader(loader, cache, executor) == (ROWS, {"hub"})
    assert run_loader(loader, cache, executor) == (ROWS, set())  # unchanged: from the cache
    path = folder / "train.jsonl"
    rewrite_keeping_size_and_mtime(path, path.read_text().replace(': "t', ': "x'))
    assert run_loader(loader, cache, executor) == ([{"text": f"x{i}", "n": i} for i in range(7)], {"hub"})
    assert run_loader(loader, cache, executor)[1] == set()


@pytest.mark.integration
@pytest.mark.parametrize("executor", ["threaded", "mp"])
def test_num_examples_in_a_pipeline(folder, tmp_path, executor):
    needs_full_install()

    def loader():
        return LoadDataFromHub(name="hub", repo_id=str(folder), batch_size=2, num_examples=3)

    assert run_loader(loader, tmp_path / "cache", executor) == (ROWS[:3], {"hub"})
