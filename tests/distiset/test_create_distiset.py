"""create_distiset: rebuilding results from a run's data folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stillhouse.distiset import Distiset, ParquetOutputWriter, create_distiset
from stillhouse.distiset.writer import LeafSchemaError


def _run(tmp_path, batches_per_leaf, *, rows_per_file=2):
    """Write a run folder (`run/data/<leaf>/...` plus pipeline.yaml and .log); return data dir."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pipeline.yaml").write_text("pipeline: {name: demo}\n")
    (run_dir / "pipeline.log").write_text("a log line\n")
    writer = ParquetOutputWriter(
        run_dir / "data", list(batches_per_leaf), rows_per_file=rows_per_file
    )
    for leaf, batches in batches_per_leaf.items():
        writer.begin(leaf)
        for batch in batches:
            writer.write(leaf, batch)
        writer.finish(leaf)
    return run_dir / "data"


def test_columns_none_at_first_and_filled_later(tmp_path):
    batches = [
        [{"q": "a", "answer": None}] * 2,
        [{"q": "b", "answer": None}],
        [{"q": "c", "answer": "yes"}],
    ]
    train = create_distiset(_run(tmp_path, {"leaf": batches}))["default"]["train"]
    assert train.features["answer"].dtype == "string"
    assert train.to_list() == [
        {"q": "a", "answer": None},
        {"q": "a", "answer": None},
        {"q": "b", "answer": None},
        {"q": "c", "answer": "yes"},
    ]


def test_nested_values_none_or_partial_at_first(tmp_path):
    batches = [
        [{"meta": {"a": None}, "tags": []}, {"meta": None, "tags": [None, None]}],
        [{"meta": {"a": "x", "b": 1}, "tags": ["t"]}],
    ]
    train = create_distiset(_run(tmp_path, {"leaf": batches}))["default"]["train"]
    assert train.to_list() == [
        {"meta": {"a": None, "b": None}, "tags": []},
        {"meta": None, "tags": [None, None]},
        {"meta": {"a": "x", "b": 1}, "tags": ["t"]},
    ]


def test_lists_of_none_only(tmp_path):
    # list<null> columns trip a pyarrow cast bug; they must read back unchanged.
    rows = [{"tags": [None, None], "x": i} for i in range(3)]
    train = create_distiset(_run(tmp_path, {"leaf": [rows]}, rows_per_file=2))["default"]["train"]
    assert train.to_list() == rows


def test_missing_keys_are_none(tmp_path):
    batches = [[{"a": 1}, {"a": 2, "b": "x"}], [{"c": 3.5}], [{"a": 4}]]
    train = create_distiset(_run(tmp_path, {"leaf": batches}))["default"]["train"]
    assert train.column_names == ["a", "b", "c"]
    assert train.to_list() == [
        {"a": 1, "b": None, "c": None},
        {"a": 2, "b": "x", "c": None},
        {"a": None, "b": None, "c": 3.5},
        {"a": 4, "b": None, "c": None},
    ]


def test_files_whose_types_cannot_be_unified_name_the_leaf(tmp_path):
    # The writer refuses such batches; files from elsewhere get the same clear error.
    leaf = tmp_path / "data" / "leaf"
    leaf.mkdir(parents=True)
    pq.write_table(pa.table({"v": [1]}), leaf / "00000.parquet")
    pq.write_table(pa.table({"v": ["text"]}), leaf / "00001.parquet")
    with pytest.raises(LeafSchemaError, match=r"leaf 'leaf'.*incompatible column types"):
        create_distiset(tmp_path / "data")


@pytest.mark.parametrize("enable_metadata", [False, True])
def test_metadata_column_is_kept_only_when_enabled(tmp_path, enable_metadata):
    rows = [{"x": 1, "stillhouse_metadata": {"error": None}}]
    distiset = create_distiset(_run(tmp_path, {"leaf": [rows]}), enable_metadata=enable_metadata)
    expected = ["x", "stillhouse_metadata"] if enable_metadata else ["x"]
    assert distiset["default"]["train"].column_names == expected


def test_single_leaf_is_default_and_several_keep_their_names_in_dag_order(tmp_path):
    assert list(create_distiset(_run(tmp_path / "one", {"only": [[{"x": 1}]]}))) == ["default"]
    data_dir = _run(tmp_path, {"zeta": [[{"x": 1}]], "alpha": [[{"y": 2}]]})
    assert list(create_distiset(data_dir)) == ["alpha", "zeta"]  # folders, in name order
    dag = SimpleNamespace(leaves=["zeta", "alpha", "never_ran"])
    distiset = create_distiset(data_dir, dag=dag)
    assert list(distiset) == ["zeta", "alpha", "never_ran"]
    assert len(distiset["never_ran"]["train"]) == 0
    assert isinstance(distiset, Distiset)


def test_rows_keep_file_order_past_99999_files(tmp_path):
    leaf = tmp_path / "data" / "leaf"
    leaf.mkdir(parents=True)
    for number, value in [(100000, "last"), (99999, "middle"), (0, "first")]:
        pq.write_table(pa.table({"v": [value]}), leaf / f"{number:05d}.parquet")
    assert create_distiset(tmp_path / "data")["default"]["train"]["v"] == [
        "first",
        "middle",
        "last",
    ]


def test_pipeline_files_default_to_the_run_folder(tmp_path):
    data_dir = _run(tmp_path, {"leaf": [[{"x": 1}]]})
    distiset = create_distiset(data_dir)
    assert distiset.pipeline_path == tmp_path / "run" / "pipeline.yaml"
    assert distiset.log_filename_path == tmp_path / "run" / "pipeline.log"
    other = tmp_path / "elsewhere.yaml"
    assert create_distiset(data_dir, pipeline_path=str(other)).pipeline_path == other
    (tmp_path / "run" / "pipeline.log").unlink()
    assert create_distiset(data_dir).log_filename_path is None


@pytest.mark.parametrize("form", ["str", "path", "file-url"])
def test_accepts_str_path_and_url(tmp_path, form):
    data_dir = _run(tmp_path, {"leaf": [[{"x": 1}, {"x": 2}]]})
    location = {"str": str(data_dir), "path": data_dir, "file-url": data_dir.as_uri()}[form]
    assert create_distiset(location)["default"]["train"]["x"] == [1, 2]


def test_artifacts_are_listed_per_step(tmp_path):
    data_dir = _run(tmp_path, {"leaf": [[{"x": 1}]]})
    artifacts = tmp_path / "run" / "artifacts" / "make_plot"
    (artifacts / "figures").mkdir(parents=True)
    (artifacts / "figures" / "plot.png").write_bytes(b"png")
    (artifacts / "metadata.json").write_text("{}")
    distiset = create_distiset(data_dir)
    assert distiset.artifacts == {
        "make_plot": [str(artifacts / "figures" / "plot.png"), str(artifacts / "metadata.json")]
    }
    assert create_distiset(_run(tmp_path / "other", {"leaf": [[{"x": 1}]]})).artifacts == {}


def test_rewritten_data_is_never_served_from_a_stale_cache(tmp_path):
    data_dir = _run(tmp_path, {"leaf": [[{"x": 1}, {"x": 2}]]})
    assert create_distiset(data_dir)["default"]["train"]["x"] == [1, 2]
    assert create_distiset(data_dir)["default"]["train"]["x"] == [1, 2]  # from the cache
    _run(tmp_path, {"leaf": [[{"x": 3}, {"x": 4}]]})  # same names, same sizes
    assert create_distiset(data_dir)["default"]["train"]["x"] == [3, 4]


def test_a_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No results folder at .*nowhere.*`data` folder"):
        create_distiset(tmp_path / "nowhere")


def test_memory_url(tmp_path):
    import fsspec

    writer = ParquetOutputWriter("memory://create-test/run/data", ["leaf"], rows_per_file=1)
    writer.begin("leaf")
    writer.write("leaf", [{"x": 1}, {"x": None}, {"x": 3}])
    writer.finish("leaf")
    with fsspec.open("memory://create-test/run/pipeline.yaml", "w") as handle:
        handle.write("pipeline: {}\n")
    distiset = create_distiset("memory://create-test/run/data")
    assert distiset["default"]["train"]["x"] == [1, None, 3]
    assert distiset.pipeline_path == "memory:///create-test/run/pipeline.yaml"
    fsspec.filesystem("memory").rm("/create-test", recursive=True)


@pytest.mark.timeout(120)
def test_create_distiset_in_a_fresh_process(tmp_path):
    data_dir = _run(
        tmp_path, {"first": [[{"a": None}], [{"a": "x", "b": 2}]], "second": [[{"c": 1}]]}
    )
    code = textwrap.dedent(
        f"""
        import json, sys
        from stillhouse.distiset import create_distiset
        distiset = create_distiset({str(data_dir)!r})
        json.dump({{name: splits["train"].to_list() for name, splits in distiset.items()}}, sys.stdout)
        """
    )
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "child-cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "first": [{"a": None, "b": None}, {"a": "x", "b": 2}],
        "second": [{"c": 1}],
    }


def test_an_incomplete_leaf_is_read_with_a_warning(tmp_path, caplog):
    writer = ParquetOutputWriter(tmp_path / "data", ["leaf"], rows_per_file=2)
    writer.begin("leaf")
    writer.write("leaf", [{"x": i} for i in range(3)])
    writer.flush()  # stopped here: no finish()
    distiset = create_distiset(tmp_path / "data")
    assert distiset["default"]["train"]["x"] == [0, 1, 2]
    assert "Leaf 'leaf' is incomplete" in caplog.text


def test_a_leaf_stopped_before_its_first_file_is_read_as_empty_with_a_warning(tmp_path, caplog):
    """A leaf's first file comes at `rows_per_file` rows or when it finishes; before, its
    folder has no file, and an empty result must not pass for a complete one."""
    writer = ParquetOutputWriter(tmp_path / "data", ["leaf"], rows_per_file=10_000)
    writer.begin("leaf")
    writer.write("leaf", [{"x": i} for i in range(3)])  # killed here: nothing on disk yet
    distiset = create_distiset(tmp_path / "data")
    assert len(distiset["default"]["train"]) == 0
    assert "Leaf 'leaf' is incomplete" in caplog.text and "No rows of it were written" in caplog.text
    caplog.clear()
    writer.finish("leaf")
    assert create_distiset(tmp_path / "data")["default"]["train"]["x"] == [0, 1, 2]
    assert "incomplete" not in caplog.text


def test_the_unified_copy_lives_beside_the_data_or_in_the_datasets_cache(tmp_path, monkeypatch):
    data_dir = _run(tmp_path, {"leaf": [[{"x": 1}]]})
    create_distiset(data_dir)
    [copy] = [n for n in os.listdir(data_dir / "leaf") if n.endswith(".arrow")]
    assert copy.startswith(".unified-")  # hidden: never read as data
    writer = ParquetOutputWriter(data_dir, ["leaf"])
    writer.begin("leaf")  # a rerun of the leaf drops it with the old files
    assert os.listdir(data_dir / "leaf") == []

    data_dir = _run(tmp_path / "read-only", {"leaf": [[{"x": 2}]]})
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert create_distiset(data_dir)["default"]["train"]["x"] == [2]
    assert not [n for n in os.listdir(data_dir / "leaf") if n.endswith(".arrow")]
    assert os.listdir(os.path.join(datasets.config.HF_DATASETS_CACHE, "stillhouse"))
