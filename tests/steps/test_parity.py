"""The loaders take every field distilabel 1.5.3's do, and rebuild from the step
entries of a distilabel `pipeline.yaml`. Fields distilabel's file and disk loaders
inherit from `LoadDataFromHub` without using them are accepted and change nothing."""

from __future__ import annotations

import pytest

from stillhouse.steps import LoadDataFromDisk, LoadDataFromFileSystem, LoadDataFromHub

_BASE = {"name", "resources", "pipeline", "input_mappings", "output_mappings", "use_cache",
         "batch_size", "repo_id", "split", "config", "revision", "streaming", "num_examples",
         "storage_options"}
DISTILABEL_1_5_3_FIELDS = {
    LoadDataFromHub: _BASE,
    LoadDataFromFileSystem: _BASE | {"data_files", "filetype"},
    LoadDataFromDisk: _BASE | {"dataset_path", "is_distiset", "keep_in_memory"},
}
"""`model_fields` of distilabel 1.5.3's loaders (`exclude_from_signature` aside)."""

_RESOURCES = {"replicas": 1, "cpus": None, "gpus": None, "memory": None, "resources": None}
DISTILABEL_1_5_3_DUMPS = {
    LoadDataFromFileSystem: {
        "name": "files", "resources": _RESOURCES, "input_mappings": {}, "output_mappings": {},
        "use_cache": True, "batch_size": 50, "split": "train", "config": None, "revision": None,
        "streaming": False, "num_examples": None, "storage_options": None,
        "data_files": "x.jsonl", "filetype": None,
    },
    LoadDataFromDisk: {
        "name": "disk", "resources": _RESOURCES, "input_mappings": {}, "output_mappings": {},
        "use_cache": True, "batch_size": 50, "split": None, "config": "default",
        "revision": None, "streaming": False, "num_examples": None, "storage_options": None,
        "dataset_path": "saved", "is_distiset": False, "keep_in_memory": None,
    },
}
"""Step entries of a distilabel 1.5.3 `pipeline.yaml` (`type_info` and
`runtime_parameters_info` aside)."""


@pytest.mark.parametrize("cls", list(DISTILABEL_1_5_3_FIELDS), ids=lambda cls: cls.__name__)
def test_every_distilabel_field_is_a_field(cls):
    assert DISTILABEL_1_5_3_FIELDS[cls] <= set(cls.model_fields)


@pytest.mark.parametrize("cls", list(DISTILABEL_1_5_3_DUMPS), ids=lambda cls: cls.__name__)
def test_a_distilabel_step_entry_rebuilds_the_step(cls):
    step = cls.from_dict(DISTILABEL_1_5_3_DUMPS[cls])
    assert step.name == DISTILABEL_1_5_3_DUMPS[cls]["name"]


@pytest.mark.parametrize(("cls", "path", "unused"), [
    (LoadDataFromFileSystem, {"data_files": "x.jsonl"}, {"config": "c", "revision": "v1"}),
    (LoadDataFromDisk, {"dataset_path": "saved"}, {"streaming": True, "revision": "v1"}),
], ids=["LoadDataFromFileSystem", "LoadDataFromDisk"])
def test_fields_distilabel_does_not_use_are_runtime_parameters_without_effect(cls, path, unused):
    plain = cls(**path)
    assert set(unused) <= set(plain.runtime_parameters_names)
    given = cls(**path, **unused, repo_id="ignored/as-in-distilabel")
    assert given.signature == plain.signature
    assert "repo_id" not in given.dump()
