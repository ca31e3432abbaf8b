"""Secrets at any depth are never written, logged, hashed or echoed (SPEC §6).

A client model nested in a step (alone, in a list, in a dict) holds a `SecretStr`
and a field marked `json_schema_extra={"secret": True}`; one secret arrives as a
nested runtime parameter (`parameters={"call": {"client": {"api_key": ...}}}`).
After a run, no file the run wrote, the saved pipeline file or the saved Distiset
holds any of them; changing a secret does not change a signature; and validation
errors about a secret name the field without showing its value.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from stillhouse.core import Pipeline, Step, StepInput, StepOutput
from stillhouse.core.errors import RuntimeParameterError, SerializationError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.secret_steps import CallNested, Client

KEY = "sk-nested-runtime-key-4242"
PASSWORD = "pw-nested-hunter2-777"
FALLBACK = "sk-fallback-in-a-list-999"
REGIONAL = "sk-regional-in-a-dict-555"
SECRETS = [KEY, PASSWORD, FALLBACK, REGIONAL]

logger = logging.getLogger("tests.integration.careless")
logger.setLevel(logging.DEBUG)  # as a user debugging a run would have it


def build(cache: Path, executor: str, password: str = PASSWORD) -> Pipeline:
    with Pipeline(name="nested-secrets", cache_dir=cache, executor=executor) as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(6)], batch_size=4)
        load >> CallNested(
            name="call",
            input_batch_size=4,
            client=Client(password=password),
            fallbacks=[Client(api_key=FALLBACK)],
            by_region={"eu": Client(api_key=REGIONAL, password=password)},
        )
    return pipeline


def assert_no_secret_in(folder: Path) -> list[Path]:
    written = [path for path in folder.rglob("*") if path.is_file()]
    for path in written:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"secret {secret[:6]}... leaked into {path}"
    return written


@pytest.mark.parametrize("executor", ["sync", "threaded", "mp"])
def test_nested_secrets_are_never_written_or_hashed(tmp_path, executor, capfd):
    pipeline = build(tmp_path / "cache", executor)
    distiset = pipeline.run(parameters={"call": {"client": {"api_key": KEY}}}, progress=False)
    rows = distiset["default"]["train"].to_list()
    assert rows[0]["answer"] == f"{len(KEY)}:{len(PASSWORD)}:1"  # the step got every secret

    (tmp_path / "saved").mkdir()
    pipeline.save(tmp_path / "saved" / "pipeline.yaml")
    distiset.save_to_disk(tmp_path / "saved" / "distiset")
    written = assert_no_secret_in(tmp_path)
    names = {path.name for path in written}
    assert {"pipeline.yaml", "pipeline.log"} <= names and any(n.endswith(".parquet") for n in names)
    out, err = capfd.readouterr()
    assert not [s for s in SECRETS if s in out + err]
    dumped = str(pipeline.dump())
    assert not [s for s in SECRETS if s in dumped] and "**********" not in dumped

    # Other secrets: same signatures, so everything comes from the cache.
    again = build(tmp_path / "cache", executor, password="another-password")
    rerun = again.run(parameters={"call": {"client": {"api_key": "sk-other"}}}, progress=False)
    assert rerun["default"]["train"].to_list() == rows
    assert {row["step"]: row["status"] for row in again.last_run_summary}["call"] == "cached"


def test_a_file_without_the_secrets_loads_and_wants_them_again(tmp_path):
    pipeline = build(tmp_path / "cache", "sync")
    pipeline.save(tmp_path / "pipeline.yaml")
    loaded = Pipeline.from_yaml(tmp_path / "pipeline.yaml")
    call = loaded.dag.get_step("call")
    assert call.client.api_key is None and call.client.password == ""
    assert call.fallbacks[0].api_key is None and call.by_region["eu"].api_key is None


def test_validation_errors_name_a_secret_field_but_never_show_its_value(tmp_path):
    with Pipeline(name="errors"):
        with pytest.raises(ValidationError) as typo:
            CallNested(name="c1", client={"api_kye": KEY})  # a misspelt secret field
        with pytest.raises(ValidationError) as wrong_type:
            CallNested(name="c2", client={"password": [PASSWORD]})
        step = CallNested(name="c3", client=Client())
        with pytest.raises(ValidationError) as assigned:
            step.by_region = {"eu": {"api_key": {"value": REGIONAL}}}
    for caught in (typo, wrong_type, assigned):
        text = str(caught.value) + repr(caught.value.errors(include_input=False))
        assert "client" in text or "by_region" in text
        assert not [s for s in SECRETS if s in text], text
        assert caught.value.__context__ is None and caught.value.__cause__ is None

    pipeline = build(tmp_path / "cache", "sync")
    with pytest.raises(RuntimeParameterError, match=r"'call'.*api_key") as runtime:
        pipeline.run(parameters={"call": {"client": {"api_key": [KEY]}}}, progress=False)
    assert KEY not in str(runtime.value) and runtime.value.__cause__ is None
    assert runtime.value.__suppress_context__ or runtime.value.__context__ is None


def test_a_pipeline_file_with_a_bad_secret_does_not_echo_it():
    with Pipeline(name="file") as pipeline:
        LoadDataFromDicts(name="load", data=[{"x": 1}]) >> CallNested(name="call", client=Client())
    data = pipeline.dump()
    data["pipeline"]["steps"][1]["step"]["client"]["password"] = [PASSWORD]
    with pytest.raises(SerializationError, match=r"(?s)'call'.*client\.password") as caught:
        Pipeline.from_dict(data)
    assert PASSWORD not in str(caught.value)


def test_a_wrong_value_that_holds_a_secret_is_not_echoed_either():
    """The value at the error is a whole client (a dict with its key inside)."""
    with Pipeline(name="holders"), pytest.raises(ValidationError) as caught:
        CallNested(name="c", client=Client(), fallbacks={"api_key": FALLBACK})
    assert "fallbacks" in str(caught.value) and FALLBACK not in str(caught.value)
    with Pipeline(name="plain"), pytest.raises(ValidationError) as plain:
        CallNested(name="c", client={"url": ["not", "a", "url"]})
    assert "'not'" in str(plain.value)  # a value that cannot hold a secret is still shown


class Careless(Step):
    """Logs what a careless step or an HTTP library at DEBUG would: its secrets in clear."""

    client: Client

    def process(self, inputs: StepInput) -> StepOutput:
        key = self.client.api_key.get_secret_value() if self.client.api_key else ""
        logger.info("calling with key=%s password=%s", key, self.client.password)
        logger.info("headers: {'Authorization': 'Bearer tok-from-nowhere-123', 'X-Amz-Security-Token': 'FwoGZX1'}")
        logger.info("env key %s", os.environ["STILLHOUSE_TEST_API_KEY"])
        yield inputs


@pytest.mark.parametrize("executor", ["threaded", "mp"])
def test_secrets_a_step_or_a_library_logs_are_masked_in_pipeline_log(tmp_path, executor, monkeypatch, capfd):
    monkeypatch.setenv("STILLHOUSE_TEST_API_KEY", "sk-from-the-environment-31337")
    with Pipeline(name="careless", cache_dir=tmp_path, executor=executor) as pipeline:
        LoadDataFromDicts(data=[{"x": 1}]) >> Careless(name="careless", client=Client(api_key=KEY, password=PASSWORD))
    pipeline.run(progress=False)
    [log] = tmp_path.rglob("pipeline.log")
    text = log.read_text()
    assert "calling with key=**********" in text and "password=**********" in text  # the lines are there
    for secret in (KEY, PASSWORD, "tok-from-nowhere-123", "FwoGZX1", "sk-from-the-environment-31337"):
        assert secret not in text, secret
    assert "'Authorization': 'Bearer **********'" in text


class Refused(Step):
    """Fails as a client whose key was refused might: the key in the error's text."""

    client: Client

    def process(self, inputs: StepInput) -> StepOutput:
        key = self.client.api_key.get_secret_value()
        raise PermissionError(f"key {key} was refused ({os.environ['STILLHOUSE_TEST_API_KEY']})")
        yield inputs


@pytest.mark.parametrize("executor", ["sync", "mp"])
def test_an_error_that_quotes_a_secret_is_stored_masked(tmp_path, executor, monkeypatch):
    """A failed batch's error text is stored with the batch and in its rows' metadata
    (results, Distiset): the secrets in it are masked there as in pipeline.log."""
    monkeypatch.setenv("STILLHOUSE_TEST_API_KEY", "sk-from-the-environment-31337")
    with Pipeline(name="refused", cache_dir=tmp_path / "cache", executor=executor, enable_metadata=True) as pipeline:
        LoadDataFromDicts(name="load", data=[{"x": 1}, {"x": 2}]) >> Refused(name="refused", client=Client(api_key=KEY))
    for _ in range(2):  # computed, then replayed from the cache
        rows = pipeline.run(progress=False)["default"]["train"].to_list()
        assert [row["stillhouse_metadata"]["error_refused"] for row in rows] == [
            "PermissionError: key ********** was refused (**********)"
        ] * 2
    assert_no_secret_in(tmp_path)
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert b"sk-from-the-environment-31337" not in path.read_bytes(), path
