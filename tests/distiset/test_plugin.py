"""The distiset plugin: the hook core calls, and a real pipeline run through it."""

from __future__ import annotations

import importlib.metadata
from types import SimpleNamespace

import pluggy
import pytest

from stillhouse.core import hookspecs
from stillhouse.core.engine import RunContext
from stillhouse.distiset import Distiset, ParquetOutputWriter, plugin


def _context(run_dir, leaves=("a", "b"), enable_metadata=True):
    return RunContext(
        dag=SimpleNamespace(leaves=list(leaves)),
        enable_metadata=enable_metadata,
        run_dir=run_dir,
        data_dir=f"{run_dir}/data" if run_dir else None,
    )


def test_the_entry_point_names_the_plugin_module():
    [entry] = [
        e for e in importlib.metadata.entry_points(group="stillhouse") if e.name == "distiset"
    ]
    assert entry.value == "stillhouse.distiset.plugin"


def test_the_plugin_implements_only_known_hooks():
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(plugin, name="distiset")
    manager.check_pending()
    writer = manager.hook.make_output_writer(context=_context(None))
    assert isinstance(writer, ParquetOutputWriter)


def test_the_writer_gets_the_pipeline_leaves_files_and_metadata_switch(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "pipeline.yaml").write_text("pipeline: {}\n")
    writer = plugin.make_output_writer(_context(str(run_dir)))
    for leaf in ("a", "b"):
        writer.begin(leaf)
        writer.write(leaf, [{"x": 1, "stillhouse_metadata": {"error": None}}])
        writer.finish(leaf)
    distiset = writer.result()
    assert list(distiset) == ["a", "b"]
    assert distiset["a"]["train"].column_names == ["x", "stillhouse_metadata"]
    assert distiset.pipeline_path == run_dir / "pipeline.yaml"
    assert distiset.log_filename_path is None  # the run wrote no log


def test_a_run_without_run_dir_still_returns_a_distiset():
    writer = plugin.make_output_writer(_context(None, leaves=["only"]))
    writer.begin("only")
    writer.write("only", [{"x": 1}])
    writer.finish("only")
    assert writer.result()["default"]["train"]["x"] == [1]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_pipeline_run_returns_a_distiset_and_reruns_from_the_cache(tmp_path):
    from stillhouse.core import Pipeline
    from stillhouse.core.steps import KeepColumns, LoadDataFromDicts

    def build():
        with Pipeline(name="distiset-e2e", cache_dir=tmp_path / "cache", executor="threaded") as p:
            load = LoadDataFromDicts(data=[{"x": i, "y": -i} for i in range(25)], batch_size=4)
            keep = KeepColumns(columns=["x"], input_batch_size=3)
            load >> keep
        return p

    first = build().run()
    assert isinstance(first, Distiset)
    assert first["default"]["train"]["x"] == list(range(25))
    assert first.pipeline_path is not None and first.pipeline_path.name == "pipeline.yaml"
    again = build().run()
    assert again["default"]["train"]["x"] == list(range(25))
