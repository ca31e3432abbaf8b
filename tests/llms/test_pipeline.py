"""LLM steps in real pipelines on "threaded" and "mp", against FakeOpenAIServer over HTTP."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from stillhouse.core import Pipeline
from stillhouse.core.errors import RuntimeParameterError, StepRuntimeError
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.llms import ChatGeneration, OpenAILLM, TextGeneration
from stillhouse.llms.testing import FakeOpenAIServer, Latency
from tests.llms.conftest import API_KEY
from tests.support.results import rows_of

# Pipelines need the executors, the cache and the results packages beside core and llms.
pytest.importorskip("stillhouse.executors")
pytest.importorskip("stillhouse.distiset")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(params=["threaded", "mp"])
def executor(request: pytest.FixtureRequest) -> str:
    return request.param


def _llm(server: FakeOpenAIServer, **fields: object) -> OpenAILLM:
    return OpenAILLM(model="fake-model", base_url=server.base_url, api_key=API_KEY, **fields)


def _questions(n: int) -> list[dict]:
    return [{"instruction": f"question {i}"} for i in range(n)]


def _all_files_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


def test_text_generation_rows_metadata_and_no_secret_on_disk(server, executor, tmp_path) -> None:
    with Pipeline(name="gen", executor=executor, cache_dir=tmp_path, enable_metadata=True) as pipeline:
        loader = LoadDataFromDicts(data=_questions(12), batch_size=5)
        loader >> TextGeneration(name="gen", llm=_llm(server), num_generations=2, input_batch_size=4,
                                 system_prompt="Be brief.")
    rows = rows_of(pipeline.run(progress=False))
    assert [r["instruction"] for r in rows] == [q["instruction"] for q in _questions(12) for _ in range(2)]
    assert {r["generation"] for r in rows[:2]} == {"echo: question 0"}
    assert {r["model_name"] for r in rows} == {"fake-model"}
    meta = rows[0]["stillhouse_metadata"]
    assert meta["raw_output_gen"] == "echo: question 0"
    assert meta["raw_input_gen"] == [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "question 0"}]
    assert meta["statistics_gen"] == {"input_tokens": 4, "output_tokens": 3}
    assert len(server.chat_requests(200)) == 24
    assert API_KEY not in _all_files_text(tmp_path)


def test_default_headers_reach_the_server_and_no_file(server, executor, tmp_path) -> None:
    gateway_key = "gw-SECRET-0123456789"
    with Pipeline(name="headers", executor=executor, cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=_questions(3)) >> TextGeneration(name="gen", llm=_llm(server))
    parameters = {"gen": {"llm": {"default_headers": {"X-Gateway-Key": gateway_key}}}}
    rows = rows_of(pipeline.run(parameters=parameters, progress=False))
    assert [r["generation"] for r in rows] == [f"echo: question {i}" for i in range(3)]
    assert {r["path"] for r in server.requests} == {"/v1/models", "/v1/chat/completions"}
    assert all(r["headers"].get("x-gateway-key") == gateway_key for r in server.requests)  # the key check too
    assert gateway_key not in _all_files_text(tmp_path)


def test_rerun_sends_nothing(server, executor, tmp_path) -> None:
    def build() -> Pipeline:
        with Pipeline(name="again", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=_questions(6)) >> TextGeneration(name="gen", llm=_llm(server))
        return pipeline

    first = rows_of(build().run(progress=False))
    assert rows_of(build().run(progress=False)) == first
    assert len(server.chat_requests()) == 6


def test_timeout_retries_and_limits_are_not_in_the_signature(server, executor, tmp_path) -> None:
    def build(**fields: object) -> Pipeline:
        with Pipeline(name="knobs", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=_questions(6)) >> TextGeneration(name="gen", llm=_llm(server, **fields))
        return pipeline

    first = rows_of(build().run(progress=False))
    operational = {"timeout": 7.0, "max_retries": 1, "max_concurrency": 3, "requests_per_minute": 600,
                   "tokens_per_minute": 100_000, "offline_batch_generation_block_until_done": 5.0}
    assert rows_of(build(**operational).run(progress=False)) == first
    parameters = {"gen": {"llm": {"timeout": 9.0, "max_retries": 2, "max_concurrency": 4}}}
    assert rows_of(build().run(parameters=parameters, progress=False)) == first
    assert len(server.chat_requests()) == 6  # answered from the cache each time

    build(generation_kwargs={"temperature": 0.3}).run(progress=False)
    assert len(server.chat_requests()) == 12  # what is sent changed: the step ran again


def test_failed_rows_get_none_and_their_error_the_run_goes_on(server, executor, tmp_path) -> None:
    data = _questions(6)
    data[2]["instruction"] = "broken [[status=400]]"
    server.fail_next(500, times=2, retry_after=0.01)  # transient: retried, answered
    with Pipeline(name="fail", executor=executor, cache_dir=tmp_path, enable_metadata=True) as pipeline:
        LoadDataFromDicts(data=data) >> TextGeneration(name="gen", llm=_llm(server), input_batch_size=6)
    rows = rows_of(pipeline.run(progress=False))
    assert [r["generation"] is None for r in rows] == [False, False, True, False, False, False]
    assert "400" in rows[2]["stillhouse_metadata"]["error_gen"]
    assert rows[2]["model_name"] is None
    assert rows[0]["stillhouse_metadata"].get("error_gen") is None  # (Parquet gives every row the key)


def test_retry_failed_sends_only_the_failed_rows_again(server, executor, tmp_path) -> None:
    def build() -> Pipeline:
        with Pipeline(name="gaps", executor=executor, cache_dir=tmp_path, enable_metadata=True) as pipeline:
            LoadDataFromDicts(data=_questions(8), batch_size=4) >> TextGeneration(
                name="gen", llm=_llm(server, max_retries=0), input_batch_size=4)
        return pipeline

    server.fail_next(503, times=2)  # the first two requests fail for good (no retries)
    first = build()
    rows = rows_of(first.run(progress=False))
    assert sum(r["generation"] is None for r in rows) == 2
    assert {row["step"]: row for row in first.last_run_summary}["gen"]["failed_batches"] >= 1
    assert rows_of(build().run(progress=False)) == rows  # a plain rerun returns the gaps
    sent = len(server.chat_requests())

    retried = rows_of(build().run(progress=False, retry_failed=True))
    assert [r["generation"] for r in retried] == [f"echo: question {i}" for i in range(8)]
    assert len(server.chat_requests()) - sent == 2  # the answered calls came from the record
    assert all(r["stillhouse_metadata"].get("error_gen") is None for r in retried)


def test_a_misspelt_generation_kwarg_stops_the_run_before_any_worker(server, executor, tmp_path) -> None:
    # Before: the run "succeeded" with every row None and one warning per row.
    with Pipeline(name="kwargs", executor=executor, cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=_questions(20)) >> TextGeneration(name="gen", llm=_llm(server))
    with pytest.raises(RuntimeParameterError) as info:
        pipeline.run(parameters={"gen": {"llm": {"generation_kwargs": {"max_token": 5}}}}, progress=False)
    message = str(info.value)
    assert "Step 'gen'" in message and "generation_kwargs has unknown name(s) 'max_token'" in message
    assert "did you mean 'max_tokens'?" in message and "Known: " in message
    assert server.requests == []  # not even a worker's key check


def test_generation_kwargs_changed_in_place_fail_the_step_at_load(server, tmp_path) -> None:
    llm = _llm(server)
    with Pipeline(name="kwargs-in-place", executor="threaded", cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=_questions(20)) >> TextGeneration(name="gen", llm=llm)
    llm.generation_kwargs["max_token"] = 5  # no validator sees this
    with pytest.raises(StepRuntimeError, match=r"Step 'gen': llm\.generation_kwargs has unknown name\(s\) 'max_token'"):
        pipeline.run(progress=False)
    assert server.chat_requests() == []


def test_401_fails_the_run_at_once_naming_step_and_endpoint(server, executor, tmp_path) -> None:
    wrong = "sk-wrong-KEY-0123456789abcdef"
    with Pipeline(name="auth", executor=executor, cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=_questions(50)) >> TextGeneration(
            name="gen", llm=OpenAILLM(model="fake-model", base_url=server.base_url, api_key=wrong))
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        pipeline.run(progress=False)
    assert time.monotonic() - started < 60
    message = str(info.value)
    assert "'gen'" in message and server.base_url in message and "401" in message
    assert wrong not in message and "sk-...cdef" in message
    assert server.chat_requests() == []
    assert wrong not in _all_files_text(tmp_path)


def test_a_401_on_a_call_stops_the_run_and_the_resume_sends_the_rest(server, executor, tmp_path) -> None:
    # A proxy that lets GET /models through but refuses the chat call: the key check at
    # load passes, the first call's 401 must still stop the run, not fail every row.
    def build() -> Pipeline:
        with Pipeline(name="auth-late", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=_questions(40), batch_size=4) >> TextGeneration(
                name="gen", llm=_llm(server, max_concurrency=2), input_batch_size=4, concurrency=1)
        return pipeline

    server.fail_next(200, times=6)  # a few calls answered before the key is refused
    server.fail_next(401, times=1)
    with pytest.raises(Exception) as info:
        build().run(progress=False)
    message = str(info.value)
    assert "'gen'" in message and server.base_url in message and "401" in message
    assert "sk-...cdef" in message and API_KEY not in message
    sent = len(server.chat_requests())
    assert sent < 20, f"{sent} requests: the run went on after the 401"

    rows = rows_of(build().run(progress=False))  # the key works again
    assert [r["generation"] for r in rows] == [f"echo: question {i}" for i in range(40)]
    assert len(server.chat_requests(200)) <= 40 + 2  # answered calls came from the record


def test_a_stopped_run_sends_no_new_call_and_its_resume_pays_for_none_twice(server, executor, tmp_path) -> None:
    """A graceful stop gives batches in flight a grace to finish; a call not sent yet must
    not go out then (its batch is given up when the grace ends, and the answer with it),
    and the calls answered before are recorded, so the resume sends each prompt once."""
    server.latency = Latency.fixed(0.2)  # 40 calls a second: a stall of seconds under load stays below the bound

    def build() -> Pipeline:
        with Pipeline(name="stopped", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=_questions(160), batch_size=40) >> TextGeneration(
                name="gen", llm=_llm(server, max_concurrency=8), input_batch_size=40)
        return pipeline

    pipeline = build()

    def stop_after_some_calls() -> None:
        deadline = time.monotonic() + 60
        while len(server.chat_requests(200)) < 12 and time.monotonic() < deadline:
            time.sleep(0.005)
        pipeline.stop()

    threading.Thread(target=stop_after_some_calls, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(progress=False)
    first = len(server.chat_requests())
    assert first < 80, f"{first} calls: the run went on sending after the stop"

    rows = rows_of(build().run(progress=False))
    assert [r["generation"] for r in rows] == [f"echo: question {i}" for i in range(160)]
    answered = collections.Counter(
        r["body"]["messages"][-1]["content"] for r in server.chat_requests(200)
    )
    assert len(answered) == 160
    assert [prompt for prompt, times in answered.items() if times > 1] == []  # none paid twice


class Verdict(BaseModel):
    score: int
    reason: str


def test_chat_generation_with_structured_output(server, executor, tmp_path) -> None:
    conversations = [{"messages": [{"role": "user", "content": f"judge {i}"}]} for i in range(5)]
    with Pipeline(name="judge", executor=executor, cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=conversations) >> ChatGeneration(
            name="judge", llm=_llm(server, structured_output=Verdict), group_generations=True,
            num_generations=2)
    rows = rows_of(pipeline.run(progress=False))
    assert len(rows) == 5
    for row in rows:
        assert len(row["generation"]) == 2
        assert all(Verdict.model_validate_json(g).reason.endswith(row["messages"][0]["content"])
                   for g in row["generation"])


class Judge(ChatGeneration):
    """A task with a schema of its own, as a judging task has."""

    def get_structured_output(self) -> dict:
        return Verdict.model_json_schema()


@pytest.mark.parametrize("use_default", [True, False])
def test_use_default_structured_output_applies_the_tasks_own_schema(server, tmp_path, use_default) -> None:
    conversations = [{"messages": [{"role": "user", "content": f"judge {i}"}]} for i in range(3)]
    with Pipeline(name="default-schema", executor="threaded", cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=conversations) >> Judge(
            name="judge", llm=_llm(server), use_default_structured_output=use_default)
    rows = rows_of(pipeline.run(progress=False))
    if use_default:
        assert all(Verdict.model_validate_json(r["generation"]).reason.endswith(r["messages"][0]["content"])
                   for r in rows)
        assert all(r["body"]["response_format"]["type"] == "json_schema" for r in server.chat_requests())
    else:
        assert [r["generation"] for r in rows] == [f"echo: judge {i}" for i in range(3)]


def test_one_limit_per_endpoint_across_steps_replicas_and_processes(executor, tmp_path) -> None:
    with FakeOpenAIServer(latency=0.1, api_key=API_KEY) as server:
        with Pipeline(name="limit", executor=executor, cache_dir=tmp_path) as pipeline:
            loader = LoadDataFromDicts(data=_questions(40), batch_size=10)
            for name in ("a", "b"):
                loader >> TextGeneration(name=name, llm=_llm(server, max_concurrency=3),
                                         input_batch_size=5, resources={"replicas": 2})
        pipeline.run(progress=False)
        assert len(server.chat_requests(200)) == 80
        assert server.max_in_flight <= 3
        assert server.max_in_flight == 3  # and the limit was used


def test_offline_batch_generation_suspends_then_resumes(server, executor, tmp_path) -> None:
    from stillhouse.core.errors import StepsSuspendedError

    # The jobs run until the test says they are done: a short job could end before a
    # loaded machine's run first asks about it, and then nothing would suspend.
    server.batch_seconds = 600

    def build() -> Pipeline:
        with Pipeline(name="offline", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=_questions(7), batch_size=7) >> TextGeneration(
                name="gen", llm=_llm(server, use_offline_batch_generation=True), input_batch_size=4,
                num_generations=2)
        return pipeline

    with pytest.raises(StepsSuspendedError, match="gen"):
        build().run(progress=False)
    assert server.chat_requests() == []
    assert len([r for r in server.requests if r["path"].endswith("/batches")]) == 2  # one job per batch
    server.batch_seconds = 0.0  # the jobs are done now
    rows = rows_of(build().run(progress=False))
    assert [r["generation"] for r in rows] == [f"echo: question {i}" for i in range(7) for _ in range(2)]
    assert len([r for r in server.requests if r["path"].endswith("/batches")]) == 2  # none created again


def test_an_offline_job_records_its_answers_and_a_retry_sends_only_the_failed(server, executor, tmp_path) -> None:
    def build() -> Pipeline:
        with Pipeline(name="offline-gaps", executor=executor, cache_dir=tmp_path) as pipeline:
            LoadDataFromDicts(data=_questions(6), batch_size=6) >> TextGeneration(
                name="gen", llm=_llm(server, use_offline_batch_generation=True,
                                     offline_batch_generation_block_until_done=0.05), input_batch_size=6)
        return pipeline

    def jobs() -> list[list[str]]:
        """The user messages of each batch job the server was sent, in order."""
        return [[body["messages"][-1]["content"] for body in job] for job in server.batch_inputs()]

    server.batch_seconds = 0.0
    server.fail_next(500, times=2)  # the job's first two requests fail
    rows = rows_of(build().run(progress=False))
    assert [r["generation"] for r in rows] == [None, None] + [f"echo: question {i}" for i in range(2, 6)]
    retried = rows_of(build().run(progress=False, retry_failed=True))
    assert [r["generation"] for r in retried] == [f"echo: question {i}" for i in range(6)]
    assert jobs() == [[f"question {i}" for i in range(6)], ["question 0", "question 1"]]
    assert server.chat_requests() == []


def test_offline_batch_generation_blocking_polls_in_the_same_run(server, executor, tmp_path) -> None:
    server.batch_seconds = 0.3
    with Pipeline(name="offline-block", executor=executor, cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=_questions(3)) >> TextGeneration(
            name="gen", llm=_llm(server, use_offline_batch_generation=True,
                                 offline_batch_generation_block_until_done=0.1))
    rows = rows_of(pipeline.run(progress=False))
    assert [r["generation"] for r in rows] == [f"echo: question {i}" for i in range(3)]


class CompleteText(TextGeneration):
    """A task whose input is a text prompt, as distilabel tasks may format theirs."""

    def format_input(self, input: dict) -> str:  # type: ignore[override]
        return f"Q: {input['instruction']}\nA:"


def test_a_task_formatting_text_gets_text_completions_and_retries_only_its_failures(server, tmp_path) -> None:
    def build() -> Pipeline:
        with Pipeline(name="complete", executor="threaded", cache_dir=tmp_path, enable_metadata=True) as pipeline:
            LoadDataFromDicts(data=_questions(4)) >> CompleteText(name="complete", llm=_llm(server, max_retries=0))
        return pipeline

    def completions() -> int:
        return len([r for r in server.requests if r["path"].endswith("/v1/completions")])

    server.fail_next(503)
    rows = rows_of(build().run(progress=False))
    assert [r["generation"] is None for r in rows].count(True) == 1
    assert rows[0]["stillhouse_metadata"]["raw_input_complete"] == "Q: question 0\nA:"
    assert server.chat_requests() == [] and completions() == 4
    rows = rows_of(build().run(progress=False, retry_failed=True))
    assert [r["generation"] for r in rows] == [f"echo: Q: question {i} A:" for i in range(4)]  # words, re-joined
    assert completions() == 5  # the failed one again; the other three from the record


def test_a_new_version_of_the_step_gets_the_answers_its_requests_had(server, tmp_path) -> None:
    """The call record is kept across the step's versions and keyed by what is sent and
    where: another field, more rows upstream or another step before it do not pay for
    the same requests again; use_cache=False and another server do."""
    def run(rows: int, server_: FakeOpenAIServer = server, use_cache: bool = True, **task: object) -> list[dict]:
        with Pipeline(name="versions", executor="threaded", cache_dir=tmp_path, enable_metadata=True) as pipeline:
            LoadDataFromDicts(data=_questions(rows)) >> TextGeneration(name="gen", llm=_llm(server_), **task)
        return rows_of(pipeline.run(progress=False, use_cache=use_cache))

    def sent() -> int:
        return len(server.chat_requests(200))

    run(6)
    assert sent() == 6
    rows = run(6, add_raw_input=False)  # a new signature: recomputed, answered from the record
    assert sent() == 6 and "raw_input_gen" not in rows[0]["stillhouse_metadata"]
    assert [r["generation"] for r in run(8)] == [f"echo: question {i}" for i in range(8)]
    assert sent() == 8  # only the two new rows
    run(8, use_cache=False)
    assert sent() == 16  # asked to start over: every request again
    with FakeOpenAIServer(api_key=API_KEY) as other:
        run(8, server_=other)
        assert len(other.chat_requests(200)) == 8  # another endpoint's answers are its own


def test_the_env_key_is_never_written_and_a_loaded_file_takes_its_envs_key(executor, tmp_path, monkeypatch) -> None:
    # OPENAI_API_KEY is the field's default when the LLM is made (as in distilabel); the
    # file holds no key, so a pipeline loaded from it elsewhere uses that env's key.
    old_key, new_key = "sk-old-env-SECRET-1111", "sk-new-env-SECRET-2222"
    monkeypatch.setenv("OPENAI_API_KEY", old_key)
    with FakeOpenAIServer(api_key=new_key) as server:
        with Pipeline(name="env-key", executor=executor, cache_dir=tmp_path / "cache") as pipeline:
            LoadDataFromDicts(data=_questions(3)) >> TextGeneration(
                name="gen", llm=OpenAILLM(model="fake-model", base_url=server.base_url))
        assert pipeline.dag.get_step("gen").llm.api_key.get_secret_value() == old_key
        pipeline.save(tmp_path / "pipeline.yaml")
        assert old_key not in str(pipeline.dump())

        monkeypatch.setenv("OPENAI_API_KEY", new_key)  # another machine, another key
        loaded = Pipeline.from_yaml(tmp_path / "pipeline.yaml")
        loaded.cache_dir = tmp_path / "cache"  # not in the file
        assert loaded.dag.get_step("gen").llm.api_key.get_secret_value() == new_key
        rows = rows_of(loaded.run(progress=False))
    assert [r["generation"] for r in rows] == [f"echo: question {i}" for i in range(3)]
    text = _all_files_text(tmp_path)
    assert old_key not in text and new_key not in text
