"""Steps: names, the `>>` wiring, column mappings and optional columns."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from stillhouse.core import GeneratorStep, GlobalStep, Pipeline, Step, StepInput, sample_n_steps
from stillhouse.core.errors import MissingInputsError, StepConnectionError
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.core.typing import GeneratorStepOutput, StepOutput


class Generate(Step):
    """Writes `generation` from `instruction`."""

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["generation"]

    def process(self, inputs: StepInput) -> StepOutput:
        yield [{**row, "generation": row["instruction"].upper()} for row in inputs]


class Judge(Step):
    """Reads a required and an optional column; writes a required and an optional one."""

    @property
    def inputs(self) -> dict[str, bool]:
        return {"generation": True, "system_prompt": False}

    @property
    def outputs(self) -> dict[str, bool]:
        return {"score": True, "rationale": False}

    def process(self, inputs: StepInput) -> StepOutput:
        yield [{**row, "score": 1} for row in inputs]


class Collect(GlobalStep):
    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


class Numbers(GeneratorStep):
    def process(self, offset: int = 0) -> GeneratorStepOutput:
        yield [{"n": i} for i in range(offset, 3)], True


def loader() -> LoadDataFromDicts:
    return LoadDataFromDicts(data=[{"instruction": "hi"}])


# -- names -------------------------------------------------------------------------------


def test_names_are_snake_case_of_the_class_with_the_first_free_suffix() -> None:
    with Pipeline(name="names", executor="sync"):
        first, second = Generate(), Generate()
        taken = Generate(name="generate_2")
        third = Generate()
        data = LoadDataFromDicts()
    assert [first.name, second.name, taken.name, third.name] == [
        "generate_0",
        "generate_1",
        "generate_2",
        "generate_3",
    ]
    assert data.name == "load_data_from_dicts_0"


def test_a_step_outside_a_pipeline_still_gets_a_name() -> None:
    step = Generate()
    assert step.name == "generate_0"
    assert step.pipeline is None


def test_a_name_must_be_letters_digits_dashes_or_underscores() -> None:
    with pytest.raises(ValidationError, match="name"):
        Generate(name="has space")


def test_kind_properties() -> None:
    assert Generate().is_normal and not Generate().is_global
    assert Collect().is_global and not Collect().is_normal
    assert Numbers().is_generator and not Numbers().is_normal


# -- wiring ------------------------------------------------------------------------------


def test_step_rshift_step_connects_and_returns_the_right_side() -> None:
    with Pipeline(name="wiring", executor="sync") as pipeline:
        a, b, c = loader(), Generate(), Generate()
        assert (a >> b >> c) is c
    assert list(pipeline.dag.graph.edges) == [(a.name, b.name), (b.name, c.name)]


def test_step_rshift_list_fans_out() -> None:
    with Pipeline(name="wiring", executor="sync") as pipeline:
        a, b, c = loader(), Generate(), Generate()
        assert (a >> [b, c]) == [b, c]
    assert pipeline.dag.successors(a.name) == [b.name, c.name]


def test_list_rshift_step_fans_in() -> None:
    with Pipeline(name="wiring", executor="sync") as pipeline:
        a, b, c = loader(), loader(), Collect()
        assert ([a, b] >> c) is c
    assert pipeline.dag.predecessors(c.name) == [a.name, b.name]


def test_step_rshift_routing_rshift_list_records_the_routing() -> None:
    with Pipeline(name="wiring", executor="sync") as pipeline:
        a, b, c = loader(), Generate(), Generate()
        route = sample_n_steps(1)
        assert (a >> route >> [b, c]) == [b, c]
    assert pipeline.dag.successors(a.name) == [b.name, c.name]
    assert pipeline.dag.routing == {a.name: route}


def test_connect_is_the_same_as_rshift() -> None:
    with Pipeline(name="connect", executor="sync") as connected:
        a, b, c = loader(), Generate(), Generate()
        a.connect(b, c)
    with Pipeline(name="shifted", executor="sync") as shifted:
        x, y, z = loader(), Generate(), Generate()
        x >> [y, z]
    assert list(connected.dag.graph.edges) == list(shifted.dag.graph.edges)


def test_connecting_a_step_without_pipeline_names_it() -> None:
    with Pipeline(name="one", executor="sync"):
        inside = loader()
    with pytest.raises(StepConnectionError, match=r"'lonely'.*no pipeline"):
        Generate(name="lonely") >> inside


def test_connecting_steps_of_two_pipelines_names_both() -> None:
    with Pipeline(name="one", executor="sync"):
        a = loader()
    with Pipeline(name="two", executor="sync"):
        b = Generate(name="other")
    with pytest.raises(StepConnectionError, match=r"'load_data_from_dicts_0' and 'other'"):
        a >> b


def test_pickled_step_leaves_its_pipeline_behind() -> None:
    with Pipeline(name="pickle", executor="sync"):
        step = Generate(name="g", input_batch_size=7)
    copy = pickle.loads(pickle.dumps(step))
    assert copy.pipeline is None
    assert (copy.name, copy.input_batch_size) == ("g", 7)
    assert step.pipeline is not None


# -- mappings ----------------------------------------------------------------------------


def test_process_applying_mappings_without_mappings_passes_rows_through() -> None:
    rows = list(Generate().process_applying_mappings([{"instruction": "a"}]))
    assert rows == [[{"instruction": "a", "generation": "A"}]]


def test_input_mappings_read_another_column() -> None:
    step = Generate(input_mappings={"instruction": "prompt"})
    [rows] = step.process_applying_mappings([{"prompt": "a", "id": 1}])
    assert rows == [{"prompt": "a", "id": 1, "generation": "A"}]


def test_input_mappings_restore_the_column_they_shadowed() -> None:
    step = Generate(input_mappings={"instruction": "prompt"})
    [rows] = step.process_applying_mappings([{"prompt": "a", "instruction": "kept"}])
    assert rows == [{"prompt": "a", "instruction": "kept", "generation": "A"}]


def test_output_mappings_rename_outputs() -> None:
    step = Generate(output_mappings={"generation": "answer"})
    [rows] = step.process_applying_mappings([{"instruction": "a"}])
    assert rows == [{"instruction": "a", "answer": "A"}]


def test_generator_output_mappings_rename_outputs() -> None:
    step = Numbers(output_mappings={"n": "number"})
    assert list(step.process_applying_mappings(offset=1)) == [
        ([{"number": 1}, {"number": 2}], True)
    ]


def test_mapped_input_is_found_by_validation() -> None:
    with Pipeline(name="mapped", executor="sync") as pipeline:
        data = LoadDataFromDicts(data=[{"prompt": "a"}])
        data >> Generate(
            input_mappings={"instruction": "prompt"}, output_mappings={"generation": "g"}
        )
    pipeline.validate()


# -- optional columns --------------------------------------------------------------------


def test_dict_inputs_and_outputs_say_which_columns_are_required() -> None:
    judge = Judge()
    assert judge.get_inputs() == {"generation": True, "system_prompt": False}
    assert judge.get_outputs() == {"score": True, "rationale": False}
    assert Generate().get_inputs() == {"instruction": True}


def test_optional_input_may_be_missing_but_required_one_may_not() -> None:
    with Pipeline(name="optional", executor="sync") as pipeline:
        loader() >> Generate() >> Judge(name="judge")
    pipeline.validate()

    with Pipeline(name="required", executor="sync") as pipeline:
        loader() >> Judge(name="judge")
    with pytest.raises(MissingInputsError, match=r"'judge'.*'generation'"):
        pipeline.validate()


def test_optional_output_can_be_mapped_and_feeds_later_steps() -> None:
    with Pipeline(name="optional-out", executor="sync") as pipeline:
        judged = loader() >> Generate() >> Judge(output_mappings={"rationale": "why"})
        judged >> Generate(name="explain", input_mappings={"instruction": "why"})
    pipeline.validate()


def test_impute_step_outputs_sets_mapped_outputs_to_none() -> None:
    step = Judge(output_mappings={"score": "rating"})
    assert step.impute_step_outputs(step_output=[{"generation": "g"}]) == [
        {"generation": "g", "rating": None, "rationale": None}
    ]
