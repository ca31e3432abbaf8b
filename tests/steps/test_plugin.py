"""stillhouse-steps registers its steps through the `stillhouse` entry point, so a
pipeline file names them without import paths."""

from __future__ import annotations

import yaml

from stillhouse.core import Pipeline
from stillhouse.core.plugins import plugin_origins, registry
from stillhouse.steps import STEPS, DataSampler, LoadDataFromFileSystem, MinHashDedup


def test_every_step_is_registered_by_the_steps_distribution():
    steps = registry().steps
    for cls in STEPS:
        assert steps[cls.__name__] is cls
    assert any("stillhouse-steps" in origin for origin in plugin_origins().values())


def test_a_pipeline_file_names_the_steps_and_reloads_them(tmp_path):
    with Pipeline(name="registered") as pipeline:
        loader = LoadDataFromFileSystem(name="files", data_files="s3://bucket/*.jsonl", batch_size=7)
        sampler = DataSampler(name="shots", data=[{"q": "x"}], size=1, samples=3)
        loader >> MinHashDedup(name="dedup", threshold=0.8)
    path = tmp_path / "pipeline.yaml"
    pipeline.save(path)
    saved = yaml.safe_load(path.read_text())["pipeline"]["steps"]
    names = {entry["name"]: entry["step"]["type_info"]["name"] for entry in saved}
    assert names == {"files": "LoadDataFromFileSystem", "shots": "DataSampler", "dedup": "MinHashDedup"}
    reloaded = Pipeline.from_yaml(path)
    files = reloaded.dag.get_step("files")
    assert type(files) is LoadDataFromFileSystem and files.batch_size == 7
    assert reloaded.dag.get_step("shots").data == sampler.data
    assert reloaded.dag.get_step("dedup").threshold == 0.8
