"""The column steps behave like distilabel's, called directly (no pipeline run)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stillhouse.core import Pipeline
from stillhouse.core.errors import MissingInputsError
from stillhouse.core.steps import (
    CombineOutputs,
    ExpandColumns,
    GroupColumns,
    KeepColumns,
    LoadDataFromDicts,
    MergeColumns,
)
from stillhouse.core.steps.columns import METADATA_COLUMN, merge_metadata


def run(step, *inputs):
    """Every row `process` yields, across all of its output batches."""
    return [row for batch in step.process(*inputs) for row in batch]


# -- KeepColumns ---------------------------------------------------------------------


def test_keep_columns_keeps_only_the_columns_in_the_given_order() -> None:
    step = KeepColumns(columns=["b", "a"])
    rows = run(step, [{"a": 1, "b": 2, "c": 3}, {"a": 4, "b": 5, "c": 6}])
    assert rows == [{"b": 2, "a": 1}, {"b": 5, "a": 4}]
    assert list(rows[0]) == ["b", "a"]
    assert step.inputs == ["b", "a"]
    assert step.outputs == ["b", "a"]


def test_keep_columns_yields_one_batch_per_input() -> None:
    batches = list(KeepColumns(columns=["a"]).process([{"a": 1, "x": 0}], [{"a": 2, "x": 0}]))
    assert batches == [[{"a": 1}], [{"a": 2}]]


def test_keep_columns_validation_names_a_column_that_is_not_produced() -> None:
    with Pipeline(name="keep", executor="sync") as pipeline:
        LoadDataFromDicts(data=[{"a": 1}]) >> KeepColumns(name="keep", columns=["a", "zzz"])
    with pytest.raises(MissingInputsError, match=r"'keep'.*'zzz'"):
        pipeline.validate()


# -- CombineOutputs --------------------------------------------------------------------


def test_combine_outputs_merges_rows_of_every_input_row_by_row() -> None:
    step = CombineOutputs()
    rows = run(step, [{"a": 1, "b": 2}, {"a": 3, "b": 4}], [{"c": 5, "a": 9}, {"c": 7, "a": 8}])
    assert rows == [{"a": 9, "b": 2, "c": 5}, {"a": 8, "b": 4, "c": 7}]
    assert METADATA_COLUMN not in rows[0]
    assert step.inputs == [] and step.outputs == []


def test_combine_outputs_merges_stillhouse_metadata() -> None:
    rows = run(
        CombineOutputs(),
        [{"a": 1, METADATA_COLUMN: {"error_x": "boom", "shared": 1}}],
        [{"b": 2, METADATA_COLUMN: {"shared": 2}}],
        [{"c": 3}],
    )
    assert rows == [
        {"a": 1, "b": 2, "c": 3, METADATA_COLUMN: {"error_x": "boom", "shared": [1, 2]}}
    ]


def test_merge_metadata_concatenates_list_metadata() -> None:
    merged = merge_metadata({METADATA_COLUMN: [{"a": 1}]}, {METADATA_COLUMN: [{"b": 2}]}, {})
    assert merged == [{"a": 1}, {"b": 2}]


# -- GroupColumns ----------------------------------------------------------------------


def test_group_columns_groups_values_across_inputs() -> None:
    step = GroupColumns(columns=["generation", "model_name"])
    rows = run(
        step,
        [{"instruction": "q", "generation": "g1", "model_name": "m1"}],
        [{"instruction": "q", "generation": "g2", "model_name": "m2"}],
    )
    assert rows == [
        {"instruction": "q", "grouped_generation": ["g1", "g2"], "grouped_model_name": ["m1", "m2"]}
    ]
    assert step.inputs == ["generation", "model_name"]
    assert step.outputs == ["grouped_generation", "grouped_model_name"]


def test_group_columns_output_columns_rename_the_groups() -> None:
    step = GroupColumns(columns=["generation"], output_columns=["generations"])
    assert run(step, [{"generation": 1}], [{"generation": 2}]) == [{"generations": [1, 2]}]
    assert step.outputs == ["generations"]


def test_group_columns_merges_metadata() -> None:
    rows = run(
        GroupColumns(columns=["g"]),
        [{"g": 1, METADATA_COLUMN: {"k": "a"}}],
        [{"g": 2, METADATA_COLUMN: {"k": "b"}}],
    )
    assert rows == [{"grouped_g": [1, 2], METADATA_COLUMN: {"k": ["a", "b"]}}]


def test_group_columns_rejects_output_columns_of_another_length() -> None:
    with pytest.raises(ValidationError, match="output_columns"):
        GroupColumns(columns=["a", "b"], output_columns=["x"])


# -- MergeColumns ----------------------------------------------------------------------


def test_merge_columns_flattens_lists_into_merged_column() -> None:
    step = MergeColumns(columns=["queries", "more"])
    source = [{"queries": "q1", "more": ["q2", "q3"], "id": 1}]
    assert run(step, source) == [{"id": 1, "merged_column": ["q1", "q2", "q3"]}]
    assert source[0]["more"] == ["q2", "q3"], "the input row must not be changed"
    assert step.inputs == ["queries", "more"]
    assert step.outputs == ["merged_column"]


def test_merge_columns_output_column_may_reuse_an_input_name() -> None:
    step = MergeColumns(columns=["queries", "more"], output_column="queries")
    assert run(step, [{"queries": "a", "more": ["b"]}]) == [{"queries": ["a", "b"]}]
    assert step.outputs == ["queries"]


# -- ExpandColumns ---------------------------------------------------------------------


def test_expand_columns_explodes_a_list_column_into_rows() -> None:
    step = ExpandColumns(columns=["generation"])
    rows = run(
        step,
        [{"instruction": "i", "generation": ["g1", "g2"]}, {"instruction": "j", "generation": []}],
    )
    assert rows == [
        {"instruction": "i", "generation": "g1"},
        {"instruction": "i", "generation": "g2"},
    ]
    assert step.inputs == ["generation"]
    assert step.outputs == ["generation"]
    assert step.columns == {"generation": "generation"}


def test_expand_columns_dict_form_writes_items_under_the_new_name() -> None:
    step = ExpandColumns(columns={"generation": "single"})
    rows = run(step, [{"generation": ["a", "b"]}])
    assert rows == [
        {"generation": ["a", "b"], "single": "a"},
        {"generation": ["a", "b"], "single": "b"},
    ]
    assert step.inputs == ["generation"]
    assert step.outputs == ["single"]


def test_expand_columns_expands_several_columns_side_by_side() -> None:
    rows = run(ExpandColumns(columns=["a", "b"]), [{"a": [1, 2], "b": ["x"], "k": 0}])
    assert rows == [{"a": 1, "b": "x", "k": 0}, {"a": 2, "b": None, "k": 0}]


@pytest.mark.parametrize("encoded", [True, ["generation"]])
def test_expand_columns_decodes_json_encoded_lists(encoded) -> None:
    step = ExpandColumns(columns=["generation"], encoded=encoded)
    assert run(step, [{"generation": '["a", "b"]'}]) == [{"generation": "a"}, {"generation": "b"}]


def test_expand_columns_encoded_must_be_a_subset_of_columns() -> None:
    with pytest.raises(ValidationError, match="'other'"):
        ExpandColumns(columns=["generation"], encoded=["other"])


def test_expand_columns_names_a_column_that_is_not_a_list() -> None:
    with pytest.raises(ValueError, match=r"'expand'.*'generation'.*str"):
        run(ExpandColumns(name="expand", columns=["generation"]), [{"generation": "not a list"}])


def test_column_steps_round_trip_through_a_pipeline_dict() -> None:
    with Pipeline(name="columns", executor="sync") as pipeline:
        loader = LoadDataFromDicts(data=[{"a": [1], "b": 2}])
        expand = ExpandColumns(name="expand", columns={"a": "item"}, encoded=False)
        keep = KeepColumns(name="keep", columns=["item", "b"])
        loader >> expand >> keep
    pipeline.validate()
    rebuilt = Pipeline.from_dict(pipeline.dump())
    assert rebuilt.dag.get_step("expand").columns == {"a": "item"}
    assert rebuilt.dag.get_step("keep").columns == ["item", "b"]
