"""Distiset: save/load round trips, train_test_split, repr."""

from __future__ import annotations

import uuid

import fsspec
import pytest
from datasets import Dataset, DatasetDict

from stillhouse.distiset import Distiset, ParquetOutputWriter


def _distiset(tmp_path, leaves=("text", "scores"), rows=10):
    run_dir = tmp_path / "run"
    (run_dir / "artifacts" / "text" / "plots").mkdir(parents=True)
    (run_dir / "artifacts" / "text" / "plots" / "a.png").write_bytes(b"png")
    (run_dir / "pipeline.yaml").write_text("pipeline: {name: demo}\n")
    (run_dir / "pipeline.log").write_text("a log line\n")
    writer = ParquetOutputWriter(run_dir / "data", list(leaves), rows_per_file=3)
    for leaf in leaves:
        writer.begin(leaf)
        writer.write(leaf, [{"i": i, "leaf": leaf} for i in range(rows)])
        writer.finish(leaf)
    return writer.result()


def _rows(distiset):
    return {
        name: {s: ds.to_list() for s, ds in splits.items()} for name, splits in distiset.items()
    }


@pytest.fixture(params=["path", "file-url", "memory-url"])
def target(request, tmp_path):
    if request.param == "memory-url":
        url = f"memory://distiset-{uuid.uuid4().hex}/saved"
        yield url
        fsspec.filesystem("memory").rm(url.removeprefix("memory://").split("/")[0], recursive=True)
    elif request.param == "file-url":
        yield (tmp_path / "saved").as_uri()
    else:
        yield tmp_path / "saved"


def test_save_and_load_round_trip(tmp_path, target):
    distiset = _distiset(tmp_path)
    distiset.save_to_disk(target)
    loaded = Distiset.load_from_disk(target)
    assert _rows(loaded) == _rows(distiset)
    fs, root = fsspec.core.url_to_fs(str(target))
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) == [
        "README.md",  # save_card=True by default, as in distilabel
        "artifacts",
        "pipeline.log",
        "pipeline.yaml",
        "scores",
        "text",
    ]
    with fsspec.open(str(loaded.pipeline_path), "r") as handle:
        assert handle.read() == "pipeline: {name: demo}\n"
    with fsspec.open(str(loaded.log_filename_path), "r") as handle:
        assert handle.read() == "a log line\n"
    [artifact] = loaded.artifacts["text"]
    assert artifact.endswith("artifacts/text/plots/a.png")
    # A saved Distiset can be saved again (its pipeline files now live in the first copy).
    again = tmp_path / "again"
    loaded.save_to_disk(again)
    assert (again / "pipeline.yaml").read_text() == "pipeline: {name: demo}\n"
    assert (again / "artifacts" / "text" / "plots" / "a.png").read_bytes() == b"png"


def test_save_and_load_after_a_split(tmp_path):
    distiset = _distiset(tmp_path, leaves=("only",)).train_test_split(0.8, seed=1)
    distiset.save_to_disk(tmp_path / "saved")
    loaded = Distiset.load_from_disk(tmp_path / "saved")
    assert _rows(loaded) == _rows(distiset)
    assert set(loaded["default"]) == {"train", "test"}


def test_saving_over_another_distiset_with_other_leaves_is_refused_before_writing(tmp_path, target):
    """`load_from_disk` reads every saved leaf of a folder: a Distiset saved over one with
    other leaves would read back as a mix of the two, next to the second's pipeline.yaml."""
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = _distiset(tmp_path / "first", leaves=("text", "scores"))
    first.save_to_disk(target)
    first.save_to_disk(target)  # the same leaves again: saved over, as before
    second = _distiset(tmp_path / "second", leaves=("text", "labels"), rows=4)
    with pytest.raises(FileExistsError, match=r"already holds the configuration\(s\) \['scores'\]"):
        second.save_to_disk(target)
    assert _rows(Distiset.load_from_disk(target)) == _rows(first)  # nothing was written


def test_load_from_disk_needs_a_saved_distiset(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        Distiset.load_from_disk(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no saved leaf"):
        Distiset.load_from_disk(tmp_path / "empty")


def test_train_test_split_per_leaf(tmp_path):
    distiset = _distiset(tmp_path)
    result = distiset.train_test_split(train_size=0.7, seed=42)
    assert result is distiset
    for splits in distiset.values():
        assert {name: len(ds) for name, ds in splits.items()} == {"train": 7, "test": 3}
        assert sorted([*splits["train"]["i"], *splits["test"]["i"]]) == list(range(10))
    again = _distiset(tmp_path / "again").train_test_split(train_size=0.7, seed=42)
    assert _rows(again) == _rows(distiset)
    unshuffled = _distiset(tmp_path / "unshuffled").train_test_split(0.7, shuffle=False)
    assert unshuffled["text"]["train"]["i"] == list(range(7))


def test_train_test_split_of_an_empty_leaf_and_bad_sizes():
    distiset = Distiset(empty=DatasetDict(train=Dataset.from_dict({})))
    distiset.train_test_split(0.5)
    assert {name: len(ds) for name, ds in distiset["empty"].items()} == {"train": 0, "test": 0}
    for bad in (0, 1, 1.5):
        with pytest.raises(ValueError, match=f"between 0 and 1 .*got {bad}"):
            distiset.train_test_split(bad)


def test_repr_lists_the_leaves(tmp_path):
    text = repr(_distiset(tmp_path))
    assert text.startswith("Distiset({\n    text: DatasetDict({")
    assert "    scores: DatasetDict({" in text and "num_rows: 10" in text


def test_a_saved_pipeline_file_keeps_its_inline_data(tmp_path, target):
    """The run's pipeline.yaml refers to `inline_data/<sha>.json`: saving copies it along,
    so the saved pipeline file loads (and a saved Distiset saved again still does)."""
    from stillhouse.core import Pipeline
    from stillhouse.core.steps import LoadDataFromDicts
    from stillhouse.core.testing.steps import Tag

    rows = [{"x": i} for i in range(4)]
    with Pipeline(name="inline", cache_dir=str(tmp_path / "cache"), executor="sync") as pipeline:
        LoadDataFromDicts(name="load", data=rows) >> Tag(name="tag")
    distiset = pipeline.run(progress=False)
    distiset.save_to_disk(target)
    copies = [str(target), str(tmp_path / "again")]
    Distiset.load_from_disk(target).save_to_disk(copies[1])
    for saved in copies:
        loaded = Pipeline.from_yaml(f"{saved}/pipeline.yaml")
        assert loaded.dag.get_step("load").data == rows
