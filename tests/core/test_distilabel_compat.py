"""A distilabel 1.5 script ports by changing its imports (issue 18), core side.

Each test is written from distilabel 1.5.3's documented behaviour (its docstrings
and tests); the item numbers are the issue's. Runs that need executors, the cache
and the Distiset are in tests/distiset/test_distilabel_compat.py.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, SecretStr

from stillhouse.core import (
    GlobalStep,
    Pipeline,
    RoutingBatchFunction,
    RuntimeParameter,
    Step,
    StepInput,
    StepResources,
    make_generator_step,
    routing_batch_function,
    sample_n_steps,
    step,
)
from stillhouse.core import typing as sh_typing
from stillhouse.core.errors import InvalidMappingError, RuntimeParameterError
from stillhouse.core.runtime import RuntimeParametersMixin
from stillhouse.core.steps import ExpandColumns, LoadDataFromDicts
from stillhouse.core.testing import run_step
from stillhouse.core.typing import StepOutput


class Generate(Step):
    """Writes `generation` from `instruction`, logging and saving an artifact.

    Attributes:
        style: How to write.
    """

    style: str = "plain"

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["generation"]

    def process(self, inputs: StepInput) -> StepOutput:
        self._logger.info("generating %d rows", len(inputs))
        self.save_artifact(
            "notes",
            lambda folder: (folder / "notes.txt").write_text(f"{len(inputs)} rows"),
            metadata={"rows": len(inputs)},
        )
        yield [{**row, "generation": row["instruction"].upper()} for row in inputs]


class Collect(GlobalStep):
    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


def loader(name: str = "load") -> LoadDataFromDicts:
    return LoadDataFromDicts(name=name, data=[{"instruction": "a"}, {"instruction": "b"}])


# -- 1. self._logger ------------------------------------------------------------------


def test_1_steps_log_through_self_logger_named_after_the_step(caplog) -> None:
    with Pipeline(name="logs"):
        generate = Generate(name="gen")
    assert generate._logger.name == "stillhouse.step.gen"
    with caplog.at_level(logging.INFO, logger="stillhouse.step.gen"):
        run_step(generate, [{"instruction": "a"}])
    assert ("stillhouse.step.gen", logging.INFO, "generating 1 rows") in caplog.record_tuples


# -- 2. make_generator_step's arguments (run(dataset_batch_size=) is a run test) -------


def test_2_make_generator_step_takes_distilabels_arguments() -> None:
    rows = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]
    with Pipeline(name="gen") as pipeline:
        made = make_generator_step(
            rows,
            batch_size=2,
            output_mappings={"prompt": "instruction"},
            resources=StepResources(cpus=2),
            repo_id="ignored/repo",
        )
    assert made.pipeline is pipeline
    assert (made.batch_size, made.resources.cpus) == (2, 2)
    assert made.get_outputs() == {"instruction": True}
    batches = [rows for rows, _ in made.process_applying_mappings()]
    assert batches == [[{"instruction": "a"}, {"instruction": "b"}], [{"instruction": "c"}]]


# -- 3. artifacts ---------------------------------------------------------------------


def test_3_save_artifact_writes_files_and_metadata_under_the_step_folder(tmp_path: Path) -> None:
    with Pipeline(name="artifacts"):
        generate = Generate(name="gen")
    generate.set_pipeline_artifacts_path(tmp_path / "artifacts")
    assert generate.artifacts_directory == tmp_path / "artifacts" / "gen"
    run_step(generate, [{"instruction": "a"}, {"instruction": "b"}])
    folder = tmp_path / "artifacts" / "gen" / "notes"
    assert (folder / "notes.txt").read_text() == "2 rows"
    assert json.loads((folder / "metadata.json").read_text()) == {"rows": 2}


def test_3_save_artifact_outside_a_run_warns_and_writes_nothing(caplog) -> None:
    with Pipeline(name="artifacts"):
        generate = Generate(name="gen")
    assert generate.artifacts_directory is None
    with caplog.at_level(logging.WARNING, logger="stillhouse.step.gen"):
        rows = run_step(generate, [{"instruction": "a"}])
    assert rows[0]["generation"] == "A"
    assert "cannot save artifact 'notes'" in caplog.text


# -- 4. dump / from_dict / signatures / load stages / requirements / mappings ------------


def test_4_step_dump_and_from_dict_round_trip() -> None:
    with Pipeline(name="dump"):
        generate = Generate(name="gen", style="fancy", input_batch_size=7)
    data = generate.dump()
    assert data["type_info"] == {"module": __name__, "name": "Generate"}
    assert {"name": "input_batch_size", "optional": True}.items() <= data[
        "runtime_parameters_info"
    ][-1].items()
    with Pipeline(name="other"):
        rebuilt = Generate.from_dict(data)
    assert (rebuilt.name, rebuilt.style, rebuilt.input_batch_size) == ("gen", "fancy", 7)


def test_4_step_signature_follows_result_affecting_fields_only() -> None:
    with Pipeline(name="sig"):
        base = Generate(name="gen")
    with Pipeline(name="sig"):
        bigger_batches = Generate(name="gen", input_batch_size=99, resources=StepResources(replicas=3))
    with Pipeline(name="sig"):
        other_style = Generate(name="gen", style="fancy")
    assert len(base.signature) == 40
    assert base.signature == bigger_batches.signature
    assert base.signature != other_style.signature


def test_4_aggregated_steps_signature_changes_with_any_step() -> None:
    def build(style: str) -> Pipeline:
        with Pipeline(name="agg") as pipeline:
            loader() >> Generate(name="gen", style=style)
        return pipeline

    assert build("a").aggregated_steps_signature == build("a").aggregated_steps_signature
    assert build("a").aggregated_steps_signature != build("b").aggregated_steps_signature


def test_4_routing_batch_function_from_dict_rebuilds_sample_n_steps() -> None:
    data = sample_n_steps(2).dump()
    rebuilt = RoutingBatchFunction.from_dict(data)
    assert rebuilt.dump() == data
    assert len(rebuilt(["a", "b", "c"])) == 2


def test_4_get_load_stages_gives_stages_and_their_last_steps() -> None:
    with Pipeline(name="stages") as pipeline:
        load = loader()
        gen_a, gen_b = Generate(name="a"), Generate(name="b")
        collect = Collect(name="collect")
        after = Generate(name="after", input_mappings={"instruction": "generation"})
        load >> [gen_a, gen_b] >> collect >> after
    stages, last = pipeline.get_load_stages()
    assert stages == [["load", "a", "b"], ["collect"], ["after"]]
    assert last == [["a", "b"], ["collect"], ["after"]]


def test_4_requirements_are_deduplicated_sorted_and_invalid_ones_dropped(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="stillhouse.pipeline"):
        pipeline = Pipeline(
            name="reqs", requirements=["zzz-not-installed>=1", "pydantic>=2", "pydantic>=2", "bad req!"]
        )
    assert "'bad req!'" in caplog.text
    assert pipeline.requirements == ["pydantic>=2", "zzz-not-installed>=1"]
    assert pipeline.requirements_to_install() == ["zzz-not-installed>=1"]
    assert pipeline.dump()["requirements"] == ["pydantic>=2", "zzz-not-installed>=1"]


def test_4_verify_mappings_name_the_unknown_key() -> None:
    with Pipeline(name="maps"):
        wrong_in = Generate(name="a", input_mappings={"nope": "x"})
        wrong_out = Generate(name="b", output_mappings={"nada": "y"})
        right = Generate(name="c", input_mappings={"instruction": "x"})
    with pytest.raises(InvalidMappingError, match=r"'a'.*'nope'"):
        wrong_in.verify_inputs_mappings()
    with pytest.raises(InvalidMappingError, match=r"'b'.*'nada'"):
        wrong_out.verify_outputs_mappings()
    right.verify_inputs_mappings()
    right.verify_outputs_mappings()


# -- 5. runtime parameters inside list fields (several LLMs) ------------------------------


class FakeLLM(RuntimeParametersMixin, BaseModel):
    """An LLM-like model (as distilabel's LLMs are: a runtime-parameters model).

    Attributes:
        temperature: Sampling temperature.
    """

    model: str
    temperature: RuntimeParameter[float] = Field(default=0.7, description="Sampling temperature.")
    api_key: RuntimeParameter[str] = None


class Ensemble(Step):
    llms: list[FakeLLM]

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


def ensemble_pipeline() -> tuple[Pipeline, Ensemble]:
    with Pipeline(name="ensemble") as pipeline:
        ensemble = Ensemble(name="ens", llms=[FakeLLM(model="a"), FakeLLM(model="b")])
        loader() >> ensemble
    return pipeline, ensemble


def test_5_runtime_parameters_of_a_list_of_models_are_described_per_item() -> None:
    pipeline, _ = ensemble_pipeline()
    info = {entry["name"]: entry for entry in pipeline.get_runtime_parameters_info()["ens"]}
    per_item = info["llms"]["runtime_parameters_info"]
    assert set(per_item) == {"0", "1"}
    temperature = next(e for e in per_item["0"] if e["name"] == "temperature")
    assert {"name": "temperature", "optional": True, "description": "Sampling temperature."}.items() <= temperature.items()
    assert {"name": "api_key", "optional": False}.items() <= per_item["1"][1].items()


def test_5_run_parameters_reach_each_model_of_the_list() -> None:
    pipeline, ensemble = ensemble_pipeline()
    with pytest.raises(RuntimeParameterError, match=r"llms\.0\.api_key"):
        pipeline.validate()
    pipeline.apply_parameters(
        {"ens": {"llms": {"0": {"temperature": 0.1, "api_key": "k0"}, "1": {"api_key": "k1"}}}}
    )
    assert [(llm.temperature, llm.api_key) for llm in ensemble.llms] == [(0.1, "k0"), (0.7, "k1")]
    pipeline.validate()


def test_5_every_runtime_parameter_entry_has_distilabels_keys() -> None:
    with Pipeline(name="keys"):
        generate = Generate(name="gen")
    entries = generate.get_runtime_parameters_info()
    flat = entries[0]["runtime_parameters_info"] + entries[1:]  # resources' entries, then ours
    assert all({"name", "optional"} <= set(entry) for entry in flat)
    batch = next(e for e in flat if e["name"] == "input_batch_size")
    assert batch["description"]


# -- 6. ExpandColumns(split_statistics=...) -----------------------------------------------


def test_6_expand_columns_splits_token_statistics_among_the_new_rows() -> None:
    # distilabel's documented example: 12 tokens over 2 generations -> 6 each.
    expand = ExpandColumns(columns=["generation"], split_statistics=True)
    row = {
        "instruction": "instruction 1",
        "generation": ["generation 1", "generation 2"],
        "stillhouse_metadata": {"statistics_gen": {"input_tokens": [12], "output_tokens": [13]}},
    }
    out = run_step(expand, [row])
    assert [r["generation"] for r in out] == ["generation 1", "generation 2"]
    stats = [r["stillhouse_metadata"]["statistics_gen"] for r in out]
    assert [s["input_tokens"] for s in stats] == [[6], [6]]
    # distilabel floors each share (13 -> 6 + 6); the remainder goes to the first rows here.
    assert [s["output_tokens"] for s in stats] == [[7], [6]]
    assert row["stillhouse_metadata"]["statistics_gen"]["input_tokens"] == [12]
    plain = run_step(ExpandColumns(columns=["generation"]), [row])
    assert plain[0]["stillhouse_metadata"]["statistics_gen"]["input_tokens"] == [12]


# -- 7. distilabel.typing -----------------------------------------------------------------

DISTILABEL_TYPING_NAMES = [  # distilabel 1.5.3, distilabel/typing/__init__.py __all__
    "ChatItem", "ChatType", "DownstreamConnectable", "DownstreamConnectableSteps",
    "FormattedInput", "GenerateOutput", "GeneratorStepOutput", "HiddenState", "ImageContent",
    "ImageUrl", "InputDataset", "InstructorStructuredOutputType", "LLMLogprobs", "LLMOutput",
    "LLMStatistics", "LoadGroups", "Logprob", "OutlinesStructuredOutputType",
    "PipelineRuntimeParametersInfo", "StandardInput", "StepColumns", "StepLoadStatus",
    "StepOutput", "StructuredInput", "StructuredOutputType", "TextContent", "TokenCount",
    "UpstreamConnectableSteps",
]


def test_7_stillhouse_core_typing_has_every_distilabel_typing_name() -> None:
    missing = [name for name in DISTILABEL_TYPING_NAMES if not hasattr(sh_typing, name)]
    assert missing == []
    assert set(DISTILABEL_TYPING_NAMES) <= set(sh_typing.__all__)


def test_7_typing_shapes_validate_as_in_distilabel() -> None:
    from pydantic import TypeAdapter

    output = {"generations": ["hi", None], "statistics": {"input_tokens": [3], "output_tokens": [1]}}
    assert TypeAdapter(sh_typing.GenerateOutput).validate_python(output) == output
    chat = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert TypeAdapter(sh_typing.ChatType).validate_python(chat) == chat
    with pytest.raises(ValueError):
        TypeAdapter(sh_typing.ChatType).validate_python([{"role": "robot", "content": "x"}])


# -- 8. get_inputs / get_outputs apply the mappings -----------------------------------------


def test_8_get_inputs_and_get_outputs_apply_the_mappings() -> None:
    with Pipeline(name="maps"):
        generate = Generate(
            name="gen", input_mappings={"instruction": "prompt"}, output_mappings={"generation": "out"}
        )
    assert generate.get_inputs() == {"prompt": True}
    assert generate.get_outputs() == {"out": True}
    assert generate.inputs == ["instruction"]


def test_8_a_mapped_input_is_validated_against_the_mapped_column() -> None:
    with Pipeline(name="maps") as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"prompt": "a"}])
        load >> Generate(name="gen", input_mappings={"instruction": "prompt"})
    pipeline.validate()


# -- 9. one routing function used in two places ----------------------------------------------


@routing_batch_function
def first_branch(steps: list[str]) -> list[str]:
    return steps[:1]


def test_9_one_routing_function_object_used_twice_is_two_routings() -> None:
    pick = first_branch
    with Pipeline(name="reuse") as pipeline:
        load = loader()
        a, b, c, d = (Generate(name=n) for n in "abcd")
        join = Generate(name="join", input_mappings={"instruction": "generation"})
        join2 = Generate(name="join2", input_mappings={"instruction": "generation"})
        load >> pick >> [a, b] >> join >> pick >> [c, d] >> join2
    pipeline.validate()
    assert set(pipeline.dag.routing) == {"load", "join"}
    assert pipeline.dag.routing["load"] is not pipeline.dag.routing["join"]
    steps = [r["step"] for r in pipeline.dump()["pipeline"]["routing_batch_functions"]]
    assert steps == ["load", "join"]


# -- 10. pipeline names, subclasses, dump layout ------------------------------------------------


class MyPipeline(Pipeline):
    pass


def test_10_an_empty_name_is_unnamed() -> None:
    assert Pipeline(name="").name == Pipeline().name == "pipeline"


@pytest.mark.parametrize("how", ["dict", "yaml", "json"])
def test_10_a_subclass_rebuilds_as_the_subclass(how: str, tmp_path: Path) -> None:
    with MyPipeline(name="mine") as pipeline:
        loader() >> Generate(name="gen")
    if how == "dict":
        rebuilt = MyPipeline.from_dict(pipeline.dump())
    else:
        path = tmp_path / f"pipeline.{how}"
        pipeline.save(path, format=how)
        rebuilt = getattr(MyPipeline, f"from_{how}")(path)
    assert type(rebuilt) is MyPipeline
    assert rebuilt.dag.step_names == ["load", "gen"]


def test_10_dump_has_requirements_and_sample_n_steps_as_distilabel_writes_it() -> None:
    with Pipeline(name="layout", requirements=["pydantic>=2"]) as pipeline:
        loader() >> sample_n_steps(2) >> [Generate(name="a"), Generate(name="b"), Generate(name="c")]
    data = pipeline.dump()
    assert data["requirements"] == ["pydantic>=2"]
    routing = pipeline.dag.routing["load"].dump()
    assert routing["step"] == "load"
    assert routing["type_info"] == {
        "module": "stillhouse.core.routing", "name": "sample_n_steps", "kwargs": {"n": 2}
    }
    rebuilt = Pipeline.from_dict(data)
    assert rebuilt.requirements == ["pydantic>=2"]
    assert rebuilt.dag.routing["load"].dump() == routing


# -- 11. @step checks and steps outside a pipeline ---------------------------------------------


def test_11_step_with_two_step_input_parameters_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"more than one parameter annotated with `StepInput`"):

        @step(inputs=["a"], outputs=["b"])
        def Twice(first: StepInput, second: StepInput) -> StepOutput:
            yield first

    @step(inputs=["a"], outputs=["b"])
    def Many(*inputs: StepInput) -> StepOutput:  # one list per predecessor: allowed
        yield inputs[0]


def test_11_a_step_created_outside_a_pipeline_logs_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="stillhouse.step"):
        Generate(name="lonely")
    assert "'lonely' was created outside a pipeline" in caplog.text
    caplog.clear()
    with Pipeline(name="inside"), caplog.at_level(logging.WARNING, logger="stillhouse.step"):
        Generate(name="fine")
    assert caplog.text == ""


# -- 12. distilabel's _Serializable, run()'s positional order, routing descriptions --------------


class WithSecret(Step):
    token: SecretStr | None = None
    style: str = "plain"

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


@pytest.mark.parametrize(("suffix", "format"), [(".json", "json"), (".yaml", "yaml"), (".yml", "yaml")])
def test_12_a_step_saves_and_loads_as_a_file_without_its_secrets(tmp_path: Path, suffix: str, format: str) -> None:
    with Pipeline(name="save"):
        original = WithSecret(name="secretive", token="sk-abc123", style="fancy", input_batch_size=7)
    path = tmp_path / f"step{suffix}"
    original.save(path, format=format)
    assert "sk-abc123" not in path.read_text()
    for load in (WithSecret.from_file, getattr(WithSecret, f"from_{format}")):
        with Pipeline(name="load"):
            rebuilt = load(path)
            assert (rebuilt.name, rebuilt.style, rebuilt.input_batch_size, rebuilt.token) == (
                "secretive", "fancy", 7, None
            )


def test_12_saving_as_json_is_the_default_and_a_bad_file_is_named(tmp_path: Path) -> None:
    with Pipeline(name="save"):
        WithSecret(name="plain").save(tmp_path / "step")
        assert json.loads((tmp_path / "step").read_text())["type_info"]["name"] == "WithSecret"
        with pytest.raises(ValueError, match=r"suffix: name it \.json, \.yaml or \.yml"):
            WithSecret.from_file(tmp_path / "step")
        (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
        with pytest.raises(ValueError, match=r"list\.yaml holds list"):
            WithSecret.from_yaml(tmp_path / "list.yaml")


def test_12_run_takes_its_arguments_in_api_order() -> None:
    """API.md: parameters, use_cache, storage_parameters, use_fs_to_pass_data, dataset,
    logging_handlers, dataset_batch_size, retry_failed."""
    names = list(inspect.signature(Pipeline.run).parameters)[1:9]
    assert names == ["parameters", "use_cache", "storage_parameters", "use_fs_to_pass_data", "dataset",
                     "logging_handlers", "dataset_batch_size", "retry_failed"]


def test_12_routing_batch_function_takes_distilabels_positional_description() -> None:
    @routing_batch_function("Sends every batch to the first step.")
    def first(steps: list[str]) -> list[str]:
        return steps[:1]

    assert isinstance(first, RoutingBatchFunction)
    assert first.description == "Sends every batch to the first step."
    assert first.routing_function(["a", "b"]) == ["a"]
