"""OpenAILLM against FakeOpenAIServer over real HTTP: outputs, retries, limits, record."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from enum import Enum

import pytest
from pydantic import BaseModel

from stillhouse.llms import LLMCallError, OpenAILLM
from stillhouse.llms.testing import FakeOpenAIServer
from tests.llms.conftest import API_KEY

HI = [{"role": "user", "content": "hi"}]


def _llm(server: FakeOpenAIServer, **fields: object) -> OpenAILLM:
    # A model name per server: outside a run an endpoint's limits live as long as the
    # process and the first definition wins, and a later test's server may get an
    # earlier one's port (the same endpoint, other limits).
    model = server.__dict__.setdefault("test_model", f"fake-model-{uuid.uuid4().hex[:8]}")
    return OpenAILLM(model=model, base_url=server.base_url, api_key=API_KEY, **fields)


def test_generate_returns_distilabel_generate_output(server: FakeOpenAIServer) -> None:
    llm = _llm(server)
    outputs = llm.generate([HI, [{"role": "user", "content": "a b c"}]], num_generations=3)
    llm.unload()
    assert outputs[0] == {
        "generations": ["echo: hi"] * 3,
        "statistics": {"input_tokens": [1, 1, 1], "output_tokens": [2, 2, 2]},
    }
    assert outputs[1]["generations"] == ["echo: a b c"] * 3
    assert len(server.chat_requests()) == 6  # one call per generation


def test_generation_kwargs_are_sent(server: FakeOpenAIServer) -> None:
    llm = _llm(server, generation_kwargs={"temperature": 0.2, "max_new_tokens": 7, "top_p": 0.9,
                                          "stop": ["\n"], "seed": 3})
    llm.generate([HI])
    llm.unload()
    body = server.chat_requests()[0]["body"]
    assert {k: body[k] for k in ("temperature", "max_tokens", "top_p", "stop", "seed")} == {
        "temperature": 0.2, "max_tokens": 7, "top_p": 0.9, "stop": ["\n"], "seed": 3}
    assert "max_new_tokens" not in body


def test_unknown_generation_kwarg_is_refused_at_construction(server: FakeOpenAIServer) -> None:
    # Before: accepted, then every request failed on its own (every row None at run time).
    with pytest.raises(ValueError, match=r"generation_kwargs has unknown name\(s\) 'max_token' "
                                         r"\(did you mean 'max_tokens'\?\)\. Known: .*'temperature'"):
        _llm(server, generation_kwargs={"max_token": 5})
    llm = _llm(server, generation_kwargs={"temperature": 0.2})
    with pytest.raises(ValueError, match=r"generation_kwargs has unknown name.*'temprature'"):
        llm.generation_kwargs = {"temprature": 0.2}  # as a runtime parameter is set
    assert llm.generation_kwargs == {"temperature": 0.2}
    with pytest.raises(ValueError, match=r"generation argument.*'temprature'"):
        llm.generate([HI], temprature=0.2)  # a call's own arguments are checked when it is made
    llm.unload()
    assert server.chat_requests() == []


def test_agenerate_from_async_code(server: FakeOpenAIServer) -> None:
    import asyncio

    llm = _llm(server)

    async def main() -> dict:
        try:
            return await llm.agenerate(HI, num_generations=2, temperature=0.5)
        finally:
            await llm.aclose()

    output = asyncio.run(main())
    assert output["generations"] == ["echo: hi", "echo: hi"]
    assert all(r["body"]["temperature"] == 0.5 for r in server.chat_requests())


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_statuses_are_retried(server: FakeOpenAIServer, status: int, caplog: pytest.LogCaptureFixture) -> None:
    server.fail_next(status, times=2, retry_after=0.01)
    llm = _llm(server)
    with caplog.at_level(logging.INFO, logger="stillhouse.llms"):
        assert llm.generate([HI])[0]["generations"] == ["echo: hi"]
    llm.unload()
    assert [r["status"] for r in server.chat_requests()] == [status, status, 200]
    assert llm.call_stats[f"retry_{status}"] == 2
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and f"({status})" not in retries[0].getMessage()
    assert f", {status})" in retries[0].getMessage()


def test_retry_after_is_honoured(server: FakeOpenAIServer) -> None:
    server.fail_next(429, times=1, retry_after=1.0)
    llm = _llm(server)
    llm.generate([HI])
    llm.unload()
    first, second = server.chat_requests()
    assert second["started"] - first["started"] >= 1.0


@pytest.mark.parametrize("retry_after", ["1s", "soon", "Tue, 01 Dec 2026 99:00:00 GMT"])
def test_a_retry_after_that_does_not_parse_falls_back_to_backoff(server: FakeOpenAIServer, retry_after: str) -> None:
    server.fail_next(429, times=1, retry_after=retry_after)
    llm = _llm(server)
    [output] = llm.generate([HI])
    llm.unload()
    assert output["generations"] == ["echo: hi"]  # before: a ValueError, not retried
    assert [r["status"] for r in server.chat_requests()] == [429, 200]


def test_a_retry_after_as_an_http_date_is_honoured(server: FakeOpenAIServer) -> None:
    import email.utils

    when = int(time.time()) + 4  # an HTTP date has whole seconds; 3-4 s from now
    server.fail_next(429, times=1, retry_after=email.utils.formatdate(when, usegmt=True))
    llm = _llm(server)
    llm.generate([HI])
    llm.unload()
    first, second = server.chat_requests()
    assert first["started"] < when - 1  # there was a wait to honour
    assert second["started"] >= when - 0.05  # sent again once the date had come


@pytest.mark.timeout(60)
def test_timeouts_are_retried(server: FakeOpenAIServer) -> None:
    server.fail_next("timeout", times=1, retry_after=60.0)  # hangs 60 s; the client gives up at 0.5 s
    llm = _llm(server, timeout=0.5)
    started = time.monotonic()
    assert llm.generate([HI])[0]["generations"] == ["echo: hi"]
    llm.unload()
    # About a second (timeout, backoff, retry); the bound is far from it, for a loaded
    # machine, and far below the hang the client must not wait for.
    assert time.monotonic() - started < 30
    assert llm.call_stats["retry_timeout"] == 1


@pytest.mark.parametrize("status", [400, 404, 422])
def test_permanent_errors_are_not_retried(server: FakeOpenAIServer, status: int) -> None:
    llm = _llm(server)
    with pytest.raises(LLMCallError, match="not retryable") as info:
        llm.generate([[{"role": "user", "content": f"x [[status={status}]]"}]])
    llm.unload()
    assert info.value.status == status and info.value.attempts == 1
    assert len(server.chat_requests()) == 1


def test_401_is_not_retried_and_the_key_is_masked(server: FakeOpenAIServer) -> None:
    wrong = "sk-wrong-KEY-0123456789abcdef"
    llm = OpenAILLM(model="fake-model", base_url=server.base_url, api_key=wrong)
    with pytest.raises(LLMCallError) as info:
        llm.generate([HI])
    llm.unload()
    assert info.value.status == 401 and len(server.chat_requests()) == 1
    assert wrong not in str(info.value)


def test_gives_up_after_max_retries(server: FakeOpenAIServer) -> None:
    server.fail_next(500, times=10)
    llm = _llm(server, max_retries=2)
    with pytest.raises(LLMCallError, match="after 3 attempts"):
        llm.generate([HI])
    llm.unload()
    assert len(server.chat_requests()) == 3


def test_api_key_from_env_and_never_dumped(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    llm = OpenAILLM(model="fake-model")
    assert llm.base_url == server.base_url
    # The field holds the env's key, as distilabel's does (a SecretStr, shown masked).
    assert llm.api_key is not None and llm.api_key.get_secret_value() == API_KEY
    assert API_KEY not in json.dumps(llm.model_dump(mode="json")) + repr(llm) + str(llm)
    assert "api_key" not in llm.model_dump()
    assert llm.generate([HI])[0]["generations"] == ["echo: hi"]
    llm.unload()
    monkeypatch.setenv("OPENAI_API_KEY", "")
    assert OpenAILLM(model="fake-model").api_key is None  # an empty variable is no key
    explicit = OpenAILLM(model="fake-model", api_key=API_KEY)
    assert API_KEY not in json.dumps(explicit.model_dump(mode="json")) + repr(explicit)
    assert "api_key" not in explicit.model_dump()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_an_llm_dumps_saves_and_loads_as_distilabels_do_without_its_key(server: FakeOpenAIServer, tmp_path, suffix) -> None:
    llm = _llm(server, generation_kwargs={"temperature": 0.2})
    data = llm.dump()
    assert data["type_info"] == {"module": "stillhouse.llms.openai_llm", "name": "OpenAILLM"}
    assert API_KEY not in json.dumps(data)
    assert OpenAILLM.from_dict(data).generation_kwargs == {"temperature": 0.2}
    path = tmp_path / f"llm{suffix}"
    llm.save(path, format=suffix[1:])
    assert API_KEY not in path.read_text()
    loaded = OpenAILLM.from_file(path)
    assert (loaded.model, loaded.base_url, loaded.generation_kwargs) == (llm.model, server.base_url, {"temperature": 0.2})


class Verdict(BaseModel):
    score: int
    reason: str


def test_structured_output_from_a_pydantic_model(server: FakeOpenAIServer) -> None:
    llm = _llm(server, structured_output=Verdict)
    output = llm.generate([HI])[0]
    llm.unload()
    Verdict.model_validate_json(output["generations"][0])
    sent = server.chat_requests()[0]["body"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == Verdict.model_json_schema()
    assert llm.model_dump(mode="json")["structured_output"] == Verdict.model_json_schema()


def test_structured_output_from_a_json_schema(server: FakeOpenAIServer) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    llm = _llm(server, structured_output=schema)
    assert "ok" in json.loads(llm.generate([HI])[0]["generations"][0])
    llm.unload()


class _Mode(Enum):
    """Stands in for `instructor.Mode`, which distilabel scripts pass as `mode`."""

    TOOLS = "tool_call"


@pytest.mark.parametrize("form", [
    {"schema": Verdict},  # the example in distilabel 1.5.3's OpenAILLM docstring
    {"schema": Verdict, "format": "json"},
    {"schema": Verdict, "mode": "tool_call"},
    {"schema": Verdict, "format": "json", "mode": _Mode.TOOLS},
    {"schema": Verdict.model_json_schema()},
], ids=["schema", "schema+format", "schema+mode", "schema+format+enum-mode", "json-schema"])
def test_structured_output_in_distilabels_forms(server: FakeOpenAIServer, form: dict) -> None:
    llm = _llm(server, structured_output=form)
    output = llm.generate([HI])[0]  # before: TypeError (a model class is not JSON) per request
    llm.unload()
    Verdict.model_validate_json(output["generations"][0])
    sent = server.chat_requests()[0]["body"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == Verdict.model_json_schema()
    assert llm.model_dump(mode="json")["structured_output"] == Verdict.model_json_schema()


@pytest.mark.parametrize(("form", "message"), [
    ({"schema": Verdict, "format": "regex"}, r"structured_output\['format'\] = 'regex' is not supported.*leave 'format' out"),
    ({"schema": Verdict, "mode": "anthropic_tools"}, r"structured_output\['mode'\] = 'anthropic_tools' is not supported.*'tool_call'.*leave 'mode' out"),
    ({"schema": Verdict, "mode": "parallel_tool_call"}, r"structured_output\['mode'\] = 'parallel_tool_call' is not supported"),
    ({"schema": Verdict, "max_retries": 2}, r"structured_output\['max_retries'\] = 2 .* not supported.*retry_failed=True.*Remove 'max_retries'"),
    ({"schema": Verdict, "fromat": "json"}, r"structured_output has unknown key\(s\) 'fromat'\. Known: 'schema', 'format', 'mode'"),
    ({"type": "object", "x-model": Verdict}, r"structured_output is not a JSON schema.*pydantic model class itself"),
], ids=["format-regex", "other-providers-mode", "parallel-mode", "max_retries", "misspelt-key", "not-json"])
def test_unsupported_structured_output_is_refused_at_construction(form: dict, message: str) -> None:
    # Before: each was accepted, and every request failed (or the wrapper went out as the schema).
    with pytest.raises(ValueError, match=message):
        OpenAILLM(model="m", structured_output=form)


def test_invalid_schema_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        OpenAILLM(model="m", structured_output={"type": "objekt"})


def test_answer_not_fitting_the_schema_fails_without_retry(server: FakeOpenAIServer) -> None:
    # The fake server ignores `pattern`, so its answer breaks this schema.
    schema = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[0-9]+$"}}, "required": ["id"]}
    llm = _llm(server, structured_output=schema)
    with pytest.raises(LLMCallError, match="does not fit the schema") as info:
        llm.generate([HI])
    llm.unload()
    assert info.value.reason == "schema" and len(server.chat_requests()) == 1


def test_an_answer_not_fitting_the_schema_is_not_recorded_so_a_retry_asks_again(server: FakeOpenAIServer, tmp_path) -> None:
    schema = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[0-9]+$"}}, "required": ["id"]}
    for _ in range(2):  # a run, then its retry
        llm = _llm(server, structured_output=schema)
        llm.load(record_dir=tmp_path)
        with pytest.raises(LLMCallError, match="does not fit the schema"):
            llm.generate([HI])
        llm.unload()
        assert llm.call_stats["recorded"] == 0
    assert len(server.chat_requests()) == 2  # before: the bad answer came back from the record


def test_a_recorded_answer_not_fitting_the_schema_is_asked_again(server: FakeOpenAIServer, tmp_path) -> None:
    """A record written before answers were checked: its bad answer is skipped for good."""
    schema = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[0-9]+$"}}, "required": ["id"]}
    unchecked = _llm(server)  # the same request, recorded without a schema to check it against
    unchecked.load(record_dir=tmp_path)
    request = _llm(server, structured_output=schema).build_request(HI)

    async def call_once() -> None:
        await unchecked.call(request)
        await unchecked.aclose()

    asyncio.run(call_once())
    unchecked.unload()
    llm = _llm(server, structured_output=schema)
    llm.load(record_dir=tmp_path)
    assert llm.recorded(request) is None
    llm.unload()


def test_concurrency_limit_is_respected(server: FakeOpenAIServer) -> None:
    server.latency = type(server.latency).fixed(0.05)
    llm = _llm(server, max_concurrency=5)
    llm.generate([[{"role": "user", "content": f"q{i}"}] for i in range(40)])
    llm.unload()
    assert server.max_in_flight <= 5 and len(server.chat_requests(200)) == 40


def test_429_backs_off_concurrency_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    # 429s forced on one call, not a server over its capacity: how many 429s a capacity
    # gives depends on how many requests this machine gets in flight at once (a loaded
    # one may never exceed it). Four in a row are "many" at 16 (more than 20% of 16).
    with FakeOpenAIServer(latency=0.02, retry_after=0.01) as server:
        llm = OpenAILLM(model=f"fake-model-{uuid.uuid4().hex[:8]}", base_url=server.base_url, api_key="k",
                        max_concurrency=16, max_retries=3)
        server.fail_next(429, times=4)
        with caplog.at_level(logging.INFO, logger="stillhouse.llms"):
            assert llm.generate([HI])[0]["generations"] == ["echo: hi"]
        assert "concurrency 16 -> 8" in caplog.text  # backed off on many 429s
        assert llm._aimd.current == 8
        # The fourth 429 lowered the limit: its retry is not counted, so 3 retries were enough.
        assert "not counted" in [r for r in caplog.records if "retrying" in r.getMessage()][-1].getMessage()
        outputs = llm.generate([[{"role": "user", "content": f"q{i}"}] for i in range(100)])
        llm.unload()
    assert all(o["generations"] for o in outputs)
    assert llm.call_stats["retry_429"] == 4
    # and came back up with the successes: one slot per `current` of them, so
    # 8 + 9 + ... + 15 = 92 of the 101 since the back-off bring it back to the ceiling.
    assert llm._aimd.current == 16


def test_record_answers_a_repeated_call_without_sending(server: FakeOpenAIServer, tmp_path) -> None:
    first = _llm(server)
    first.load(record_dir=tmp_path)
    expected = first.generate([HI, [{"role": "user", "content": "bye"}]], num_generations=2)
    first.unload()
    assert len(server.chat_requests()) == 4
    with (tmp_path / next(p.name for p in tmp_path.iterdir())).open("a") as handle:
        handle.write('{"key": "torn')  # a SIGKILL mid-write leaves a torn last line
    again = _llm(server)
    again.load(record_dir=tmp_path)
    assert again.generate([HI, [{"role": "user", "content": "bye"}]], num_generations=2) == expected
    assert again.generate([HI], temperature=0.3)  # a different request is sent
    again.unload()
    assert len(server.chat_requests()) == 5 and again.call_stats["recorded"] == 4


def test_failed_calls_are_not_recorded(server: FakeOpenAIServer, tmp_path) -> None:
    llm = _llm(server, max_retries=0)
    llm.load(record_dir=tmp_path)
    server.fail_next(500)
    with pytest.raises(LLMCallError):
        llm.generate([HI])
    llm.unload()
    again = _llm(server)
    again.load(record_dir=tmp_path)
    assert again.generate([HI])[0]["generations"] == ["echo: hi"]
    again.unload()
    assert [r["status"] for r in server.chat_requests()] == [500, 200]


def test_requests_per_minute_paces_the_calls(server: FakeOpenAIServer) -> None:
    llm = _llm(server, requests_per_minute=600)  # 10 a second, at most a second's worth at once
    started, called = time.monotonic(), time.time()
    llm.generate([[{"role": "user", "content": f"q{i}"}] for i in range(30)])
    llm.unload()
    assert time.monotonic() - started >= 1.8
    # Measured from the call, not from the first request the server saw: a request
    # reaches the server after it was sent, never before, so under load the count can
    # only fall. (From the first arrival it could rise: a first connection slow to be
    # accepted shifts that window later, over requests the limiter paced correctly.)
    assert sum(r["started"] - called < 1.0 for r in server.chat_requests()) <= 21


def test_tokens_per_minute_counts_the_estimated_tokens(server: FakeOpenAIServer) -> None:
    # Each call is estimated at 1 prompt token + max_tokens 99 = 100 tokens; 6,000 a minute
    # is 100 a second: 5 calls need about 4 seconds after the first.
    llm = _llm(server, tokens_per_minute=6000, generation_kwargs={"max_new_tokens": 99})
    started = time.monotonic()
    llm.generate([[{"role": "user", "content": f"q{i}"}] for i in range(5)])
    llm.unload()
    assert time.monotonic() - started >= 3.5


def test_a_spent_quota_pauses_the_endpoint_until_it_resets() -> None:
    # 3 requests per 0.6 s window, one request at a time. An answer that says the quota
    # is spent holds the next request until the window resets, instead of a 429.
    with FakeOpenAIServer(api_key=API_KEY, quota=(3, 0.6)) as server:
        llm = _llm(server, max_concurrency=1)
        outputs = llm.generate([[{"role": "user", "content": f"q{i}"}] for i in range(9)])
        llm.unload()
        assert [o["generations"] for o in outputs] == [[f"echo: q{i}"] for i in range(9)]
        assert [r["status"] for r in server.requests if r["path"].endswith("/chat/completions")] == [200] * 9
        starts = sorted(r["started"] for r in server.chat_requests())
        assert starts[6] - starts[0] > 0.6  # the quota held: three windows for nine requests


def test_quota_headers_are_read_as_openai_sends_them() -> None:
    from stillhouse.llms.retry import duration_seconds, quota_wait

    assert duration_seconds("6m0s") == 360 and duration_seconds("1.5s") == 1.5
    assert duration_seconds("20ms") == pytest.approx(0.02) and duration_seconds("1h2m3s") == 3723
    assert duration_seconds("2") == 2 and duration_seconds("soon") is None and duration_seconds("1s later") is None
    assert duration_seconds("nan") is None and duration_seconds("inf") is None
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.2s",
             "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}
    assert quota_wait(spent) == 360  # the longer of the spent quotas
    assert quota_wait({**spent, "x-ratelimit-remaining-tokens": "150"}) == 1.2
    assert quota_wait({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s"}) is None
    assert quota_wait({"x-ratelimit-remaining-requests": "0"}) is None and quota_wait(None) is None


def test_retry_waits_the_longer_of_the_backoff_and_retry_after() -> None:
    import random

    from stillhouse.llms.retry import RetryPolicy

    policy, rng = RetryPolicy(), random.Random(0)
    for retry, low, high in [(1, 0.25, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (8, 15.0, 30.0)]:
        for retry_after in (None, 0.0, 0.05):  # none, or shorter than the backoff: the backoff
            assert low <= policy.delay(retry, retry_after, rng) <= high
    assert 5.0 <= policy.delay(1, 5.0, rng) <= 5.1  # a longer Retry-After, with a little jitter
    assert 0.05 <= policy.exactly(0.05, rng) <= 0.055


def test_default_headers_are_sent_and_kept_secret(server: FakeOpenAIServer) -> None:
    # distilabel's `default_headers`: a gateway's key travels in a header, so it is a secret.
    gateway_key = "gw-SECRET-0123456789"
    llm = _llm(server, default_headers={"X-Gateway-Key": gateway_key, "X-Title": "stillhouse"})
    llm.generate([HI])
    llm.unload()
    sent = [r["headers"] for r in server.requests]
    assert all(h.get("x-gateway-key") == gateway_key and h.get("x-title") == "stillhouse" for h in sent)
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert "default_headers" not in llm.model_dump() and gateway_key not in repr(llm)
    assert gateway_key not in llm._mask(f"the server said: {gateway_key}")


DISTILABEL_FIELDS = {
    # The fields of distilabel 1.5.3's classes (`model_fields`, read from its sdist), so
    # that its scripts and the dicts of its pipeline files port by changing imports. Not
    # listed: `exclude_from_signature`, a class attribute here (docs/migrating.md).
    "OpenAILLM": ["api_key", "base_url", "default_headers", "generation_kwargs", "jobs_ids", "max_retries",
                  "model", "offline_batch_generation_block_until_done", "structured_output", "timeout",
                  "use_offline_batch_generation"],
    "TextGeneration": ["add_raw_input", "add_raw_output", "columns", "group_generations", "input_batch_size",
                       "input_mappings", "llm", "name", "num_generations", "output_mappings", "pipeline",
                       "resources", "system_prompt", "template", "use_cache", "use_default_structured_output",
                       "use_system_prompt"],
    "ChatGeneration": ["add_raw_input", "add_raw_output", "group_generations", "input_batch_size",
                       "input_mappings", "llm", "name", "num_generations", "output_mappings", "pipeline",
                       "resources", "use_cache", "use_default_structured_output"],
}


@pytest.mark.parametrize("name", sorted(DISTILABEL_FIELDS))
def test_every_field_of_distilabels_class_is_accepted(name: str) -> None:
    import stillhouse.llms

    missing = set(DISTILABEL_FIELDS[name]) - set(getattr(stillhouse.llms, name).model_fields)
    assert not missing, f"{name} lacks distilabel's {sorted(missing)}"


def test_distilabels_jobs_ids_are_accepted_and_said_not_to_be_polled(server: FakeOpenAIServer, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="stillhouse.llms"):
        llm = _llm(server, jobs_ids=("batch_abc",))
    assert "not polled" in caplog.text and llm.jobs_ids == ("batch_abc",)


def test_logprobs_come_back_as_distilabel_returns_them(server: FakeOpenAIServer) -> None:
    llm = _llm(server, generation_kwargs={"logprobs": True, "top_logprobs": 2})
    [output] = llm.generate([HI], num_generations=2)
    llm.unload()
    assert output["generations"] == ["echo: hi", "echo: hi"]
    assert output["logprobs"] == [[
        [{"token": "echo:", "logprob": pytest.approx(-0.1)}, {"token": "echo:~1", "logprob": pytest.approx(-1.1)}],
        [{"token": "hi", "logprob": pytest.approx(-0.2)}, {"token": "hi~1", "logprob": pytest.approx(-1.2)}],
    ]] * 2
    plain = _llm(server)
    assert "logprobs" not in plain.generate([HI])[0]
    plain.unload()


def test_a_damaged_recorded_answer_is_sent_again_and_the_rest_still_answer(server: FakeOpenAIServer, tmp_path, caplog) -> None:
    first = _llm(server)
    first.load(record_dir=tmp_path)
    first.generate([HI, [{"role": "user", "content": "bye"}]])
    first.unload()
    [path] = tmp_path.iterdir()
    lines = path.read_bytes().splitlines(keepends=True)
    hi = next(i for i, line in enumerate(lines) if b"echo: hi" in line)
    lines[hi] = lines[hi].replace(b"echo: hi", b"echo: \xff\xfe hi")  # a line whose bytes no longer parse
    path.unlink()
    (tmp_path / "calls-0-first.jsonl").write_bytes(b"".join(lines))  # read before the next writer's file
    again = _llm(server)
    again.load(record_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="stillhouse.llms.record"):
        outputs = again.generate([HI, [{"role": "user", "content": "bye"}]])
    again.unload()
    assert [o["generations"] for o in outputs] == [["echo: hi"], ["echo: bye"]]
    assert "is damaged" in caplog.text
    assert len(server.chat_requests()) == 3 and again.call_stats["recorded"] == 1  # only "hi" sent again
    third = _llm(server)  # the damaged line is still there, and so is the answer sent again
    third.load(record_dir=tmp_path)
    assert [o["generations"] for o in third.generate([HI])] == [["echo: hi"]]
    third.unload()
    assert len(server.chat_requests()) == 3  # never paid for a third time


def _completions(server: FakeOpenAIServer) -> list[dict]:
    return [r for r in server.requests if r["path"].endswith("/v1/completions")]


def test_a_text_input_is_a_text_completion_as_in_distilabel(server: FakeOpenAIServer) -> None:
    llm = _llm(server, generation_kwargs={"temperature": 0.2, "stop": ["\n"]})
    [output] = llm.generate(["Once upon a time"], num_generations=2)
    llm.unload()
    assert output == {
        "generations": ["echo: Once upon a time"] * 2,
        "statistics": {"input_tokens": [4, 4], "output_tokens": [5, 5]},
    }
    assert server.chat_requests() == []
    bodies = [r["body"] for r in _completions(server)]
    assert len(bodies) == 2  # one call per generation, as for chat
    assert bodies[0] == {"model": llm.model, "prompt": "Once upon a time", "temperature": 0.2,
                         "stop": ["\n"], "max_tokens": 128}


def test_echo_returns_the_prompt_with_a_text_completion_and_is_left_out_of_chat(server: FakeOpenAIServer) -> None:
    llm = _llm(server)
    [text] = llm.generate(["Say"], echo=True)
    [chat] = llm.generate([HI], echo=True)
    llm.unload()
    assert text["generations"] == ["Sayecho: Say"]
    assert chat["generations"] == ["echo: hi"]
    assert _completions(server)[0]["body"]["echo"] is True
    assert "echo" not in server.chat_requests()[0]["body"]  # distilabel: only for text input


def test_text_completion_logprobs_come_back_as_distilabel_returns_them(server: FakeOpenAIServer) -> None:
    llm = _llm(server, generation_kwargs={"logprobs": True, "top_logprobs": 2})
    [output] = llm.generate(["hi"])
    llm.unload()
    assert _completions(server)[0]["body"]["logprobs"] == 2  # a count on /v1/completions
    assert output["logprobs"] == [[
        [{"token": "echo:", "logprob": pytest.approx(-0.1)}, {"token": "echo:~1", "logprob": pytest.approx(-1.1)}],
        [{"token": "hi", "logprob": pytest.approx(-0.2)}, {"token": "hi~1", "logprob": pytest.approx(-1.2)}],
    ]]


def test_a_text_input_with_a_response_format_is_refused_before_sending(server: FakeOpenAIServer) -> None:
    llm = _llm(server, structured_output=Verdict)
    with pytest.raises(ValueError, match=r"text input .* cannot take `structured_output`.*conversation"):
        llm.generate(["rate this"])
    llm.unload()
    assert server.requests == []


def test_a_recorded_text_completion_is_not_sent_again(server: FakeOpenAIServer, tmp_path) -> None:
    first = _llm(server)
    first.load(record_dir=tmp_path)
    first.generate(["hi", "bye"])
    first.unload()
    again = _llm(server)
    again.load(record_dir=tmp_path)
    outputs = again.generate(["hi", "bye"])
    again.unload()
    assert [o["generations"] for o in outputs] == [["echo: hi"], ["echo: bye"]]
    assert len(_completions(server)) == 2 and again.call_stats["recorded"] == 2


def test_a_recorded_answer_changed_but_still_json_is_sent_again(server: FakeOpenAIServer, tmp_path, caplog) -> None:
    first = _llm(server)
    first.load(record_dir=tmp_path)
    first.generate([[{"role": "user", "content": "say 0"}]])
    first.unload()
    [path] = tmp_path.iterdir()
    path.write_bytes(path.read_bytes().replace(b"echo: say 0", b"echo: sax 0"))  # one bit, valid JSON
    again = _llm(server)
    again.load(record_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="stillhouse.llms.record"):
        [output] = again.generate([[{"role": "user", "content": "say 0"}]])
    again.unload()
    assert output["generations"] == ["echo: say 0"]
    assert "does not match its checksum" in caplog.text
    assert len(server.chat_requests()) == 2
