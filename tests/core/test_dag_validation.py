"""Every check `Pipeline.validate()` makes before a worker starts (SPEC.md §5).

Each failure is asserted by its class and by a message that names the step and
the offending field.
"""

from __future__ import annotations

import pytest

from stillhouse.core import (
    GeneratorStep,
    Pipeline,
    RuntimeParameter,
    StepInput,
    StepOutput,
    StepResources,
    requirements,
    routing_batch_function,
    sample_n_steps,
    step,
)
from stillhouse.core.errors import (
    CycleError,
    DuplicateStepNameError,
    InvalidMappingError,
    InvalidResourcesError,
    MissingInputsError,
    MissingRequirementsError,
    PipelineValidationError,
    RoutingError,
    RuntimeParameterError,
    StepConnectionError,
)
from stillhouse.core.steps import CombineOutputs, LoadDataFromDicts


@step(inputs=["instruction"], outputs=["generation"])
def Generate(inputs: StepInput) -> StepOutput:
    yield inputs


@step(inputs=["generation"], outputs=["score"])
def Score(inputs: StepInput, model: RuntimeParameter[str] = None) -> StepOutput:
    yield inputs


@step(inputs=["instruction"], outputs=["summary"], step_type="global")
def Summarise(inputs: StepInput) -> StepOutput:
    yield inputs


@step(inputs=["instruction"], outputs=["generation"])
def OneInput(inputs: StepInput) -> StepOutput:
    yield inputs


@routing_batch_function
def first_only(steps: list[str]) -> list[str]:
    return steps[:1]


def loader(**kwargs) -> LoadDataFromDicts:
    return LoadDataFromDicts(data=[{"instruction": "hi"}], **kwargs)


def pipeline(name: str = "validation", **kwargs) -> Pipeline:
    return Pipeline(name=name, executor="sync", **kwargs)


def test_a_valid_pipeline_passes() -> None:
    with pipeline() as p:
        loader() >> Generate() >> Score(model="m")
    p.validate()


def test_an_empty_pipeline_is_invalid() -> None:
    with pytest.raises(PipelineValidationError, match="no steps"):
        pipeline().validate()


def test_cycle_names_the_steps_in_it() -> None:
    with pipeline() as p:
        a, b = Generate(name="a"), Generate(name="b")
        loader() >> a >> b >> a
    with pytest.raises(CycleError, match=r"a >> b >> a|b >> a >> b"):
        p.validate()


def test_a_step_connected_to_itself_is_a_cycle() -> None:
    with pipeline():
        a = Generate(name="selfish")
        with pytest.raises(CycleError, match="'selfish'"):
            a >> a


def test_duplicate_names_name_the_step_and_the_field() -> None:
    with pipeline():
        Generate(name="twin")
        with pytest.raises(DuplicateStepNameError, match=r"'twin'.*`name=`"):
            Generate(name="twin")


def test_a_normal_step_without_predecessor() -> None:
    with pipeline() as p:
        loader()
        Generate(name="orphan")
    with pytest.raises(StepConnectionError, match=r"'orphan'.*no predecessor"):
        p.validate()


def test_a_global_step_without_predecessor() -> None:
    with pipeline() as p:
        Summarise(name="alone")
    with pytest.raises(StepConnectionError, match=r"'alone'.*no predecessor"):
        p.validate()


def test_a_generator_with_predecessors() -> None:
    with pipeline() as p:
        loader() >> loader(name="second")
    with pytest.raises(StepConnectionError, match=r"Generator step 'second' has predecessors"):
        p.validate()


def test_missing_input_column() -> None:
    with pipeline() as p:
        loader() >> Score(name="scorer", model="m")
    with pytest.raises(MissingInputsError, match=r"'scorer'.*'generation'.*\['instruction'\]"):
        p.validate()


def test_missing_input_column_after_input_mappings() -> None:
    with pipeline() as p:
        loader() >> Generate(name="gen", input_mappings={"instruction": "prompt"})
    with pytest.raises(MissingInputsError) as info:
        p.validate()
    assert str(info.value).startswith(
        "Step 'gen' reads its input 'instruction' from column 'prompt' "
        "(input_mappings={'instruction': 'prompt'}), but no step before it produces 'prompt'."
    )
    assert "Map 'instruction' to one of them, or add a step that outputs 'prompt'." in str(info.value)


def test_output_mappings_rename_what_later_steps_see() -> None:
    with pipeline() as p:
        loader() >> Generate(output_mappings={"generation": "text"}) >> Score(name="s", model="m")
    with pytest.raises(MissingInputsError, match=r"'s'.*'generation'.*'text'"):
        p.validate()


@pytest.mark.parametrize(
    ("mappings", "field"),
    [
        ({"input_mappings": {"prompt": "instruction"}}, "input_mappings key 'prompt'"),
        ({"output_mappings": {"answer": "x"}}, "output_mappings key 'answer'"),
    ],
)
def test_mapping_keys_must_be_step_columns(mappings, field) -> None:
    with pipeline() as p:
        loader() >> Generate(name="gen", **mappings)
    with pytest.raises(InvalidMappingError, match=rf"'gen'.*{field}"):
        p.validate()


def test_replicas_on_a_global_step() -> None:
    with pipeline() as p:
        loader() >> Summarise(name="summary", resources=StepResources(replicas=2))
    with pytest.raises(InvalidResourcesError, match=r"'summary' is a global step.*replicas=2"):
        p.validate()


def test_replicas_on_a_generator_step() -> None:
    with pipeline() as p:
        loader(name="source", resources={"replicas": 3}) >> Generate()
    with pytest.raises(InvalidResourcesError, match=r"'source' is a generator step.*replicas=3"):
        p.validate()


def test_replicas_on_a_normal_step_are_fine() -> None:
    with pipeline() as p:
        loader() >> Generate(resources=StepResources(replicas=4))
    p.validate()


def test_several_predecessors_need_a_process_taking_several_inputs() -> None:
    with pipeline() as p:
        [loader(), loader()] >> OneInput(name="narrow")
    with pytest.raises(StepConnectionError, match=r"'narrow' has 2 predecessors.*\*inputs"):
        p.validate()
    with pipeline() as p:
        [loader(), loader()] >> CombineOutputs()
    p.validate()


def test_routing_to_a_global_step() -> None:
    with pipeline() as p:
        loader(name="source") >> sample_n_steps(1) >> [Generate(), Summarise(name="summary")]
    with pytest.raises(RoutingError, match=r"'summary'.*'source'.*global step"):
        p.validate()


def test_sample_n_steps_with_more_than_the_successors() -> None:
    with pipeline() as p:
        loader(name="source") >> sample_n_steps(3) >> [Generate(), Generate()]
    with pytest.raises(RoutingError, match=r"'source'.*sample_n_steps\(3\).*only 2 successors"):
        p.validate()


def test_a_step_joining_routed_and_unrouted_inputs() -> None:
    with pipeline() as p:
        source = loader()
        a, b = Generate(), Generate()
        source >> first_only >> [a, b]
        [a, loader()] >> CombineOutputs(name="join")
    with pytest.raises(RoutingError, match=r"'join'.*routed and unrouted"):
        p.validate()


def test_a_routed_pipeline_with_a_convergence_step_is_valid() -> None:
    with pipeline() as p:
        loader() >> first_only >> [Generate(), Generate()] >> CombineOutputs()
    p.validate()


def test_missing_required_runtime_parameter() -> None:
    with pipeline() as p:
        loader() >> Generate() >> Score(name="scorer")
    with pytest.raises(RuntimeParameterError, match=r"'scorer'.*required runtime parameter.*model"):
        p.validate()
    p.apply_parameters({"scorer": {"model": "m"}})
    p.validate()


class ColumnsFromSource(GeneratorStep):
    """A generator that only knows its output columns once its runtime parameter is set
    (a loader reads them from its data): asking earlier fails as `outputs` would here."""

    source: RuntimeParameter[str] = None

    @property
    def outputs(self) -> list[str]:
        return [self.source.upper()]  # AttributeError on None, like opening a path of None

    def process(self, offset: int = 0):
        yield [{self.source.upper(): 1}], True


def test_missing_runtime_parameter_is_named_before_any_step_is_asked_its_outputs() -> None:
    with pipeline() as p:
        ColumnsFromSource(name="columns", output_mappings={"X": "y"}) >> Score(name="scorer", model="m")
    with pytest.raises(RuntimeParameterError, match=r"Step 'columns' is missing required runtime "
                                                    r"parameter\(s\) source\. .*run\(parameters="):
        p.validate()
    p.apply_parameters({"columns": {"source": "x"}})
    with pytest.raises(MissingInputsError, match=r"'scorer'.*'generation'"):
        p.validate()


def test_missing_requirements_name_the_package() -> None:
    with pipeline(requirements=["surely-not-installed-pkg>=1"]) as p:
        loader() >> Generate()
    with pytest.raises(
        MissingRequirementsError, match=r"(?s)'validation'.*surely-not-installed-pkg>=1"
    ):
        p.validate()


def test_installed_requirements_pass_and_invalid_ones_are_named(caplog) -> None:
    with pipeline(requirements=["pydantic>=2"]) as p:
        loader() >> Generate()
    p.validate()
    # As in distilabel (issue 18): an invalid requirement is dropped with a warning naming it.
    with caplog.at_level("WARNING", logger="stillhouse.pipeline"):
        p.requirements = ["not a requirement!!"]
    assert "'not a requirement!!'" in caplog.text
    assert p.requirements == ["pydantic>=2"]
    p.validate()


@requirements(["not valid!!", "surely-not-installed-pkg>=1"])
@step(inputs=["instruction"], outputs=["generation"])
def NeedsPackages(inputs: StepInput) -> StepOutput:
    yield inputs


def test_a_steps_invalid_requirement_is_named_once_however_often_it_is_read(caplog) -> None:
    with pipeline() as p:
        loader() >> NeedsPackages(name="needy")
    with caplog.at_level("WARNING", logger="stillhouse.pipeline"):
        for _ in range(2):  # two validations; each names who wants the missing package
            with pytest.raises(MissingRequirementsError, match=r"surely-not-installed-pkg>=1 \(needed by step 'needy'\)"):
                p.validate()
        p.dump()
    assert caplog.text.count("'not valid!!' of step 'needy' is not a valid pip requirement") == 1
