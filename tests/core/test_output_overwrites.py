"""`output_mappings` onto a column that already reaches the step is refused unless the
step opts in with `overwrite_columns` (issue 19 item 10)."""

from __future__ import annotations

import pytest

from stillhouse.core import Pipeline, StepInput, StepOutput, step
from stillhouse.core.errors import InvalidMappingError
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.core.testing import run_step


@step(inputs=["instruction"], outputs=["generation"])
def Generate(inputs: StepInput) -> StepOutput:
    yield [{**row, "generation": row["instruction"].upper()} for row in inputs]


@step(inputs=["generation"], outputs=["score"])
def Score(inputs: StepInput) -> StepOutput:
    yield [{**row, "score": len(row["generation"])} for row in inputs]


def _load():
    return LoadDataFromDicts(name="load", data=[{"instruction": "hi", "source": "web"}])


def test_mapping_onto_the_steps_own_input_names_step_mapping_and_fix():
    with Pipeline(name="overwrite") as pipeline:
        _load() >> Generate(name="gen", output_mappings={"generation": "instruction"})
    with pytest.raises(InvalidMappingError) as info:
        pipeline.validate()
    message = str(info.value)
    assert message.startswith(
        "Step 'gen': output_mappings {'generation': 'instruction'} writes over column "
        "'instruction', an input of the step, replacing its values."
    )
    assert "{'generation': 'instruction_gen'}" in message
    assert "overwrite_columns=['instruction']" in message


def test_mapping_onto_an_upstream_column_names_the_step_that_made_it():
    with Pipeline(name="overwrite") as pipeline:
        _load() >> Generate(name="gen") >> Score(name="score", output_mappings={"score": "source"})
    with pytest.raises(InvalidMappingError, match="a column step 'load' outputs"):
        pipeline.validate()


def test_overwrite_columns_opts_in_and_replaces_the_column():
    with Pipeline(name="overwrite") as pipeline:
        _load() >> Generate(name="gen", output_mappings={"generation": "instruction"},
                            overwrite_columns=["instruction"])
    pipeline.validate()
    rows = run_step(pipeline.dag.get_step("gen"), [{"instruction": "hi", "source": "web"}])
    assert rows == [{"instruction": "HI", "source": "web"}]


def test_new_names_and_identity_mappings_stay_valid():
    with Pipeline(name="fine") as pipeline:
        load = _load()
        load >> Generate(name="gen", output_mappings={"generation": "answer"})
        load >> Generate(name="same", output_mappings={"generation": "generation"})
    pipeline.validate()


def test_the_opt_in_is_kept_in_the_file_and_absent_when_unused():
    with Pipeline(name="saved") as pipeline:
        _load() >> Generate(name="gen", output_mappings={"generation": "instruction"},
                            overwrite_columns=["instruction"])
    data = pipeline.dump()
    fields = data["pipeline"]["steps"][1]["step"]
    assert fields["overwrite_columns"] == ["instruction"]
    assert "overwrite_columns" not in data["pipeline"]["steps"][0]["step"]
    Pipeline.from_dict(data).validate()


@step(inputs=["instruction"], outputs=["a", "b"])
def Two(inputs: StepInput) -> StepOutput:
    yield [{**row, "a": "A", "b": "B"} for row in inputs]


@pytest.mark.parametrize("overwrite_columns", [[], ["b"]], ids=["plain", "with-overwrite-columns"])
def test_mapping_onto_another_of_the_steps_own_outputs_is_refused(overwrite_columns):
    """Both values would be written under 'b' and one lost, whichever `overwrite_columns` says."""
    with Pipeline(name="own") as pipeline:
        _load() >> Two(name="two", output_mappings={"a": "b"}, overwrite_columns=overwrite_columns)
    with pytest.raises(InvalidMappingError) as info:
        pipeline.validate()
    message = str(info.value)
    assert message.startswith(
        "Step 'two': output_mappings {'a': 'b'} writes output 'a' onto 'b', which is also one "
        "of the step's own outputs, so one of the two columns' values would be lost."
    )
    assert "{'a': 'a_two'}" in message and "{'a': 'b', 'b': 'a'} swaps them" in message


def test_mapping_a_generators_column_onto_another_of_its_columns_is_refused():
    with Pipeline(name="own") as pipeline:
        LoadDataFromDicts(name="load", data=[{"id": 1, "text": "t"}], output_mappings={"id": "text"})
    with pytest.raises(InvalidMappingError, match=r"Step 'load': output_mappings \{'id': 'text'\} writes output "
                                                  r"'id' onto 'text'"):
        pipeline.validate()


def test_two_outputs_mapped_onto_one_name_are_refused():
    with Pipeline(name="own") as pipeline:
        _load() >> Two(name="two", output_mappings={"a": "x", "b": "x"})
    with pytest.raises(InvalidMappingError, match=r"Step 'two': output_mappings \{'a': 'x', 'b': 'x'\} writes "
                                                  r"outputs 'a', 'b' onto the same column 'x'"):
        pipeline.validate()


def test_swapping_two_outputs_loses_nothing_and_is_allowed():
    with Pipeline(name="own") as pipeline:
        _load() >> Two(name="two", output_mappings={"a": "b", "b": "a"})
    pipeline.validate()
    rows = run_step(pipeline.dag.get_step("two"), [{"instruction": "hi"}])
    assert rows == [{"instruction": "hi", "b": "A", "a": "B"}]
