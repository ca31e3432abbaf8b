"""Pipelines to and from dicts, YAML and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import Field, SecretStr

from stillhouse.core import (
    Pipeline,
    RuntimeParameter,
    StepInput,
    StepOutput,
    routing_batch_function,
    sample_n_steps,
    step,
)
from stillhouse.core.errors import RuntimeParameterError, SerializationError
from stillhouse.core.serialization import FORMAT_VERSION
from stillhouse.core.steps import CombineOutputs, KeepColumns, LoadDataFromDicts


@step(inputs=["instruction"], outputs=["generation"])
def Generate(
    inputs: StepInput, style: str = "plain", model: RuntimeParameter[str] = None
) -> StepOutput:
    yield inputs


@step(inputs=["generation"], outputs=["score"])
def Judge(
    inputs: StepInput,
    api_key: SecretStr | None = None,
    password: str = Field(default="", json_schema_extra={"secret": True}),
) -> StepOutput:
    yield inputs


@routing_batch_function
def first_only(steps: list[str]) -> list[str]:
    return steps[:1]


def build(route=None) -> Pipeline:
    with Pipeline(
        name="serialised",
        description="A test pipeline.",
        executor="sync",
        requirements=["pydantic>=2"],
    ) as pipeline:
        data = LoadDataFromDicts(name="data", data=[{"instruction": "i", "n": 1}], batch_size=7)
        a = Generate(
            name="a", style="fancy", model="m1", input_batch_size=3, resources={"replicas": 2}
        )
        b = Generate(name="b", model="m2", output_mappings={"generation": "other"})
        combine = CombineOutputs(name="combine")
        judge = Judge(name="judge", api_key="sk-very-secret", password="hunter2", use_cache=False)
        keep = KeepColumns(name="keep", columns=["instruction", "score"])
        data >> (route or sample_n_steps(2)) >> [a, b] >> combine >> judge >> keep
    return pipeline


def assert_same_pipeline(rebuilt: Pipeline, original: Pipeline) -> None:
    assert rebuilt.name == original.name
    assert rebuilt.description == original.description
    assert rebuilt.requirements == original.requirements
    assert rebuilt.executor == original.executor
    assert rebuilt.dag.step_names == original.dag.step_names
    assert list(rebuilt.dag.graph.edges) == list(original.dag.graph.edges)
    for name in original.dag.step_names:
        before, after = original.dag.get_step(name), rebuilt.dag.get_step(name)
        assert type(after) is type(before)
        secret = {"api_key", "password"}
        assert after.model_dump(exclude={"pipeline", *secret}) == before.model_dump(
            exclude={"pipeline", *secret}
        )
    assert rebuilt.signature == original.signature


def test_dump_has_a_format_version_steps_connections_and_routing() -> None:
    data = build().dump()
    assert data["stillhouse"]["format_version"] == FORMAT_VERSION
    spec = data["pipeline"]
    assert [entry["name"] for entry in spec["steps"]] == [
        "data",
        "a",
        "b",
        "combine",
        "judge",
        "keep",
    ]
    a = spec["steps"][1]["step"]
    assert a["type_info"] == {"module": __name__, "name": "Generate"}
    assert (a["style"], a["input_batch_size"], a["resources"]["replicas"]) == ("fancy", 3, 2)
    assert {"name": "model", "optional": False, "type": "str", "default": None} in a[
        "runtime_parameters_info"
    ]
    assert {"from": "data", "to": ["a", "b"]} in spec["connections"]
    assert spec["routing_batch_functions"] == [
        {
            "step": "data",
            "description": "Sample 2 steps from the list of downstream steps.",  # distilabel's text
            "type_info": {
                "module": "stillhouse.core.routing", "name": "sample_n_steps", "kwargs": {"n": 2}
            },
        }
    ]


def test_secrets_are_never_written(tmp_path: Path) -> None:
    pipeline = build()
    judge = next(
        entry for entry in pipeline.dump()["pipeline"]["steps"] if entry["name"] == "judge"
    )
    assert "api_key" not in judge["step"] and "password" not in judge["step"]
    for fmt in ("yaml", "json"):
        path = tmp_path / f"pipeline.{fmt}"
        pipeline.save(path, format=fmt)
        text = path.read_text()
        assert "sk-very-secret" not in text and "hunter2" not in text


def test_from_dict_round_trip() -> None:
    original = build()
    assert_same_pipeline(Pipeline.from_dict(original.dump()), original)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_save_and_load_round_trip(tmp_path: Path, fmt: str) -> None:
    original = build()
    path = tmp_path / f"pipeline.{fmt}"
    original.save(path, format=fmt)
    if fmt == "json":
        json.loads(path.read_text())  # really JSON
        rebuilt = Pipeline.from_json(path)
    else:
        yaml.safe_load(path.read_text())
        rebuilt = Pipeline.from_yaml(str(path))
    assert_same_pipeline(rebuilt, original)
    rebuilt.validate()


def test_sample_n_steps_is_rebuilt_with_its_argument() -> None:
    rebuilt = Pipeline.from_dict(build().dump())
    route = rebuilt.dag.routing["data"]
    assert route.dump()["type_info"]["kwargs"] == {"n": 2}
    assert sorted(route(["a", "b"])) == ["a", "b"]
    assert rebuilt.dag.routed_branches("data") == ["a", "b"]


def test_a_custom_routing_function_is_rebuilt() -> None:
    rebuilt = Pipeline.from_dict(build(route=first_only).dump())
    route = rebuilt.dag.routing["data"]
    assert route.name == "first_only"
    assert route(["a", "b"]) == ["a"]


def test_secrets_must_be_given_again_after_loading() -> None:
    rebuilt = Pipeline.from_dict(build().dump())
    judge = rebuilt.dag.get_step("judge")
    assert judge.api_key is None and judge.password == ""


def test_required_runtime_parameters_survive_the_round_trip() -> None:
    original = build()
    original.dag.get_step("a").model = None
    rebuilt = Pipeline.from_dict(original.dump())
    with pytest.raises(RuntimeParameterError, match=r"'a'.*model"):
        rebuilt.validate()


def test_a_newer_format_version_is_refused(tmp_path: Path) -> None:
    data = build().dump()
    data["stillhouse"]["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(SerializationError, match=rf"format version {FORMAT_VERSION + 1}.*Upgrade"):
        Pipeline.from_dict(data)
    path = tmp_path / "future.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SerializationError, match=r"future\.yaml.*newer"):
        Pipeline.from_yaml(path)


def test_an_unknown_step_class_names_the_step() -> None:
    data = build().dump()
    data["pipeline"]["steps"][4]["step"]["type_info"] = {"module": __name__, "name": "Vanished"}
    with pytest.raises(SerializationError, match=rf"'judge'.*{__name__}\.Vanished"):
        Pipeline.from_dict(data)
    data["pipeline"]["steps"][4]["step"]["type_info"] = {"module": "not_a_module_x", "name": "J"}
    with pytest.raises(SerializationError, match=r"'judge'.*not_a_module_x\.J"):
        Pipeline.from_dict(data)


def test_fields_a_step_does_not_accept_name_the_step() -> None:
    data = build().dump()
    data["pipeline"]["steps"][1]["step"]["no_such_field"] = 1
    with pytest.raises(SerializationError, match=r"(?s)'a'.*no_such_field"):
        Pipeline.from_dict(data)


def test_files_that_are_not_pipelines_are_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("pipeline: [unclosed")
    with pytest.raises(SerializationError, match=r"broken\.yaml.*not valid YAML"):
        Pipeline.from_yaml(broken)
    other = tmp_path / "other.yaml"
    other.write_text("name: something else\n")
    with pytest.raises(SerializationError, match=r"other\.yaml.*'pipeline'"):
        Pipeline.from_yaml(other)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("pipeline: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SerializationError, match="not valid YAML"):
        Pipeline.from_yaml(path)


def test_save_refuses_an_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match=r"'toml'.*'yaml' or 'json'"):
        build().save(tmp_path / "pipeline.toml", format="toml")
