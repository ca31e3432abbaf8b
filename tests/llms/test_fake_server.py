"""FakeOpenAIServer over real HTTP: routes, latency, concurrency cap, injected errors."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

from stillhouse.llms.testing import FakeOpenAIServer, Latency, instance_for


def _chat(base_url: str, content: str, **extra: object) -> httpx.Response:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{base_url}/chat/completions", json=body, timeout=30)


def test_echo_answer_with_usage_and_log() -> None:
    with FakeOpenAIServer() as server:
        response = _chat(server.base_url, "hello there", max_tokens=2)
        assert response.status_code == 200
        data = response.json()
        assert data["choices"][0]["message"]["content"] == "echo: hello"
        assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
        assert httpx.get(f"{server.base_url}/models").json()["data"][0]["id"] == "fake-model"
        assert [r["status"] for r in server.chat_requests()] == [200]


def test_sustains_64_concurrent_slow_requests_and_caps_with_429() -> None:
    with FakeOpenAIServer(latency=0.5, max_concurrency=64, retry_after=2) as server:
        with concurrent.futures.ThreadPoolExecutor(80) as pool:
            statuses = list(pool.map(lambda i: _chat(server.base_url, f"q{i}"), range(80)))
        codes = sorted(r.status_code for r in statuses)
        assert codes.count(200) >= 64 and set(codes) <= {200, 429}
        assert server.max_in_flight <= 64
        limited = [r for r in statuses if r.status_code == 429]
        assert all(r.headers["Retry-After"] == "2" for r in limited)


def test_latency_is_seeded_per_request() -> None:
    latency = Latency.lognormal(median=0.01, sigma=1.0)
    draws = []
    for _ in range(2):
        with FakeOpenAIServer(latency=latency, seed=7) as server:
            for i in range(5):
                _chat(server.base_url, f"q{i}")
            draws.append([round(r["latency"], 9) for r in server.chat_requests()])
    assert draws[0] == draws[1] and len(set(draws[0])) == 5


def test_injected_rates_and_forced_statuses() -> None:
    with FakeOpenAIServer(error_rate=0.3, rate_limit_rate=0.2, seed=1) as server:
        codes = [_chat(server.base_url, f"q{i}").status_code for i in range(200)]
        assert 40 < codes.count(500) < 80 and 20 < codes.count(429) < 60
    with FakeOpenAIServer() as server:
        server.fail_next(503, times=2)
        assert [_chat(server.base_url, "x").status_code for _ in range(3)] == [503, 503, 200]
        assert _chat(server.base_url, "always [[status=404]]").status_code == 404


def test_wrong_key_is_401() -> None:
    with FakeOpenAIServer(api_key="sk-right") as server:
        assert _chat(server.base_url, "x").status_code == 401
        ok = httpx.get(f"{server.base_url}/models", headers={"Authorization": "Bearer sk-right"})
        assert ok.status_code == 200


def test_json_schema_answers_are_valid() -> None:
    import jsonschema

    schema = {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "kind": {"enum": ["a", "b"]},
            "ok": {"type": "boolean"},
            "inner": {"$ref": "#/$defs/Inner"},
        },
        "required": ["score", "tags", "kind", "ok", "inner"],
        "$defs": {"Inner": {"type": "object", "properties": {"x": {"type": "number"}}}},
    }
    with FakeOpenAIServer() as server:
        fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        content = _chat(server.base_url, "rate me", response_format=fmt).json()["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(content), schema)
    assert instance_for(schema, "rate me", schema) == json.loads(content)


@pytest.mark.timeout(30)
def test_batches_files_roundtrip() -> None:
    import openai

    # A job longer than any delay between two calls, then "done" (batch_seconds is read
    # on every look): a short job could end before a loaded machine first asks.
    with FakeOpenAIServer(batch_seconds=600) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        line = {"custom_id": "0", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}}
        upload = client.files.create(file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        assert client.batches.retrieve(batch.id).status == "in_progress"
        server.batch_seconds = 0.0
        done = client.batches.retrieve(batch.id)
        assert done.status == "completed"
        out = json.loads(client.files.content(done.output_file_id).text.splitlines()[0])
        assert out["custom_id"] == "0"
        assert out["response"]["body"]["choices"][0]["message"]["content"] == "echo: hi"


def test_a_quota_sends_openais_headers_and_429s_what_is_over_it() -> None:
    with FakeOpenAIServer(quota=(2, 30.0)) as server:  # one window for the whole test
        first, second, third = (_chat(server.base_url, f"q{i}") for i in range(3))
        assert [r.status_code for r in (first, second, third)] == [200, 200, 429]
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert [r.headers["x-ratelimit-remaining-requests"] for r in (first, second, third)] == ["1", "0", "0"]
        reset = third.headers["x-ratelimit-reset-requests"]
        assert reset.endswith("ms") and 0 < int(reset[:-2]) <= 30_000
        assert 0 < float(third.headers["Retry-After"]) <= 30
        assert [r.get("reason") for r in server.chat_requests()] == [None, None, "quota"]
    with FakeOpenAIServer() as server:  # no quota: no headers
        assert "x-ratelimit-remaining-requests" not in _chat(server.base_url, "q").headers

