"""Pipeline and step names become cache path components: only plain ones are accepted.

`..` would put the lock, the run folder and `steps/` into the parent of the cache root,
`.` into the root itself; a name over 200 bytes would fail with ENAMETOOLONG at run time.
All of these are rejected when the pipeline or step is made, with a clear error.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stillhouse.core import Pipeline
from stillhouse.core.errors import PipelineValidationError
from stillhouse.core.steps import KeepColumns, LoadDataFromDicts


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", "/abs", "a\x00b", "a\\b", "a\nb", " "])
def test_pipeline_names_that_are_not_plain_path_components_are_rejected(name: str) -> None:
    with pytest.raises(PipelineValidationError, match="cannot name a cache folder"):
        Pipeline(name=name)


def test_a_pipeline_name_over_200_bytes_is_a_validation_error() -> None:
    Pipeline(name="p" * 200)
    with pytest.raises(PipelineValidationError, match="201 bytes long; the limit is 200"):
        Pipeline(name="p" * 201)


def test_renaming_a_pipeline_is_checked_too() -> None:
    pipeline = Pipeline(name="fine.name-1")
    with pytest.raises(PipelineValidationError, match=r"'\.\.'"):
        pipeline.name = ".."
    assert pipeline.name == "fine.name-1"


def test_a_pipeline_file_with_a_dotdot_name_is_refused() -> None:
    with Pipeline(name="ok") as pipeline:
        LoadDataFromDicts(name="load", data=[{"a": 1}])
    data = pipeline.dump()
    data["pipeline"]["name"] = ".."
    with pytest.raises(PipelineValidationError, match="cannot name a cache folder"):
        Pipeline.from_dict(data)


@pytest.mark.parametrize("name", ["..", "a/b", "a.b", "a\x00b", "s" * 201])
def test_step_names_that_cannot_be_path_components_are_rejected(name: str) -> None:
    with Pipeline(name="steps"), pytest.raises(ValidationError, match="name"):
        KeepColumns(name=name, columns=["a"])
