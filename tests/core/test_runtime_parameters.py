"""Runtime parameters: which fields they are, how they are described and set."""

from __future__ import annotations

import warnings
from typing import Optional

import pytest

from stillhouse.core import Pipeline, RuntimeParameter, Step, StepInput, StepOutput, StepResources
from stillhouse.core.errors import RuntimeParameterError
from stillhouse.core.steps import LoadDataFromDicts


class Generate(Step):
    """Generates text with a model.

    Attributes:
        model: The model that generates.
        temperature: Sampling temperature.
        seed: Not a runtime parameter.
    """

    model: RuntimeParameter[str] = None
    temperature: RuntimeParameter[float] = 0.7
    seed: int = 0

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["generation"]

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


# distilabel's spelling of an optional runtime parameter; pydantic >= 2.12 warns about
# the Field() that RuntimeParameter carries inside the Optional (see StepResources).
with warnings.catch_warnings():
    warnings.simplefilter("ignore")

    class WithOptional(Step):
        """Attributes:
        token: An optional token.
        """

        token: Optional[RuntimeParameter[str]] = None  # noqa: UP045 - the distilabel spelling

        def process(self, inputs: StepInput) -> StepOutput:
            yield inputs


def info_by_name(step: Step) -> dict[str, dict]:
    return {entry["name"]: entry for entry in step.get_runtime_parameters_info()}


def test_runtime_parameters_names_say_which_are_optional() -> None:
    names = Generate().runtime_parameters_names
    assert names["model"] is False  # None and not Optional: required
    assert names["temperature"] is True
    assert names["input_batch_size"] is True
    assert "seed" not in names
    assert names["resources"]["replicas"] is True  # nested models are nested dicts
    assert WithOptional().runtime_parameters_names["token"] is True


def test_info_lists_name_optional_type_default_and_description() -> None:
    info = info_by_name(Generate())
    assert info["model"] == {
        "name": "model",
        "optional": False,
        "type": "str",
        "default": None,
        "description": "The model that generates.",
    }
    assert info["temperature"] == {
        "name": "temperature",
        "optional": True,
        "type": "float",
        "default": 0.7,
        "description": "Sampling temperature.",
    }
    assert (
        info["input_batch_size"]["description"] == "How many rows each call of `process` receives."
    )
    assert "seed" not in info


def test_info_describes_nested_resources() -> None:
    nested = info_by_name(Generate())["resources"]["runtime_parameters_info"]
    replicas = next(entry for entry in nested if entry["name"] == "replicas")
    assert replicas["default"] == 1
    assert replicas["description"].startswith("How many copies of the step")


def test_the_first_documented_attribute_gets_its_description() -> None:
    # "Attributes:" directly above the first entry must not swallow it.
    assert info_by_name(WithOptional())["token"]["description"] == "An optional token."


class Wrapped(Step):
    """A step whose descriptions go on over several lines.

    Attributes:
        model: The model that generates, named as its endpoint
            knows it (`org/name`).
        temperature: Sampling temperature.
        seed: Not a runtime parameter,
            and its text is not read.

    Runtime parameters:
        - `retries`: How often a failed call is sent again
          before the row fails.
    Notes:
        Text of another section.
    """

    model: RuntimeParameter[str] = None
    temperature: RuntimeParameter[float] = 0.7
    retries: RuntimeParameter[int] = 2
    seed: int = 0

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


def test_a_description_goes_on_over_its_continuation_lines() -> None:
    """Up to the next attribute, a blank line or the next section, joined with spaces."""
    info = info_by_name(Wrapped())
    assert info["model"]["description"] == (
        "The model that generates, named as its endpoint knows it (`org/name`)."
    )
    assert info["temperature"]["description"] == "Sampling temperature."
    assert info["retries"]["description"] == "How often a failed call is sent again before the row fails."
    # The base step's own: `pipeline info` and saved files showed "...an overlong batch is a".
    assert info["batch_timeout"]["description"] == (
        "Seconds one batch may take (None: no limit); an overlong batch is a failed batch "
        "(a generator or global step's stops the run)."
    )


def test_pipeline_info_is_keyed_by_step_name() -> None:
    with Pipeline(name="info", executor="sync") as pipeline:
        LoadDataFromDicts(name="data", data=[{"instruction": "i"}]) >> Generate(name="gen")
    info = pipeline.get_runtime_parameters_info()
    assert list(info) == ["data", "gen"]
    assert {entry["name"] for entry in info["data"]} == {"resources", "batch_size", "batch_timeout"}


def test_set_runtime_parameters_sets_values_and_nested_ones() -> None:
    step = Generate()
    assert step.set_runtime_parameters({"model": "m", "resources": {"replicas": 2}}) == []
    assert step.model == "m"
    assert step.resources.replicas == 2


def test_set_runtime_parameters_warns_about_unknown_names() -> None:
    messages = Generate(name="gen").set_runtime_parameters({"modle": "m", "resources": {"gpu": 1}})
    assert len(messages) == 2
    assert (
        "'modle'" in messages[0]
        and "'gen'" in messages[0]
        and "Did you mean 'model'?" in messages[0]
    )
    assert "'gpu'" in messages[1] and "'gpus'" in messages[1]


def test_missing_runtime_parameters_are_dotted_names() -> None:
    assert Generate().missing_runtime_parameters() == ["model"]
    assert Generate(model="m").missing_runtime_parameters() == []
    assert StepResources().missing_runtime_parameters() == []


def test_apply_parameters_warns_about_unknown_steps_and_fields() -> None:
    with Pipeline(name="params", executor="sync") as pipeline:
        LoadDataFromDicts(name="data", data=[{"instruction": "i"}]) >> Generate(name="gen")
    with pytest.warns(UserWarning, match=r"'ghost'.*'params'"):
        pipeline.apply_parameters({"ghost": {"model": "m"}})
    with pytest.warns(UserWarning, match=r"'modle'.*'gen'"):
        pipeline.apply_parameters({"gen": {"modle": "m"}})
    pipeline.apply_parameters({"gen": {"model": "m", "temperature": 0.1}})
    step = pipeline.dag.get_step("gen")
    assert (step.model, step.temperature) == ("m", 0.1)


def test_apply_parameters_rejects_bad_values_naming_the_step() -> None:
    with Pipeline(name="params", executor="sync") as pipeline:
        LoadDataFromDicts(name="data", data=[{"instruction": "i"}]) >> Generate(name="gen")
    with pytest.raises(RuntimeParameterError, match=r"(?s)'gen'.*temperature"):
        pipeline.apply_parameters({"gen": {"temperature": "hot"}})
    with pytest.raises(RuntimeParameterError, match=r"'gen'.*must be a dict"):
        pipeline.apply_parameters({"gen": ["model"]})
