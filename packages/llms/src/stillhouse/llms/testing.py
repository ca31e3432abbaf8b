"""`FakeOpenAIServer`: a real OpenAI-compatible HTTP server on 127.0.0.1 for tests,
docs and benchmarks.

It answers `/v1/chat/completions`, `/v1/completions` (text in, text out),
`/v1/models`, `/v1/files` (+ `/content`) and `/v1/batches` from a background thread, with seeded latencies, a concurrency cap
that answers 429 with `Retry-After`, injected errors and a request log. Answers are
deterministic (an echo of the last user message, or a JSON object valid for the
requested schema) and carry token counts. Nothing here is used by the steps
themselves; it only stands in for a real endpoint.

```python
with FakeOpenAIServer(latency=Latency.lognormal(0.2, 1.0), max_concurrency=64) as server:
    llm = OpenAILLM(model="fake-model", base_url=server.base_url, api_key="sk-test")
```

Per-request directives for tests: a user message containing `[[status=404]]` is
answered with that status every time; `[[hang=3]]` makes the answer take 3 s.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import math
import random
import re
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAIServer", "Latency"]

_DIRECTIVE = re.compile(r"\[\[(status|hang)=([0-9.]+)\]\]")


@dataclass(frozen=True)
class Latency:
    """How long the server takes to answer one chat request.

    `Latency.fixed(0.05)` or `Latency.lognormal(median=0.2, sigma=1.0)`. Each request's
    draw is seeded by the server's seed, the request body and how often that body was
    seen, so it does not depend on thread scheduling.
    """

    median: float = 0.0
    sigma: float = 0.0

    @classmethod
    def fixed(cls, seconds: float) -> Latency:
        return cls(median=seconds, sigma=0.0)

    @classmethod
    def lognormal(cls, median: float, sigma: float) -> Latency:
        return cls(median=median, sigma=sigma)

    def draw(self, rng: random.Random) -> float:
        if self.sigma <= 0 or self.median <= 0:
            return max(self.median, 0.0)
        return rng.lognormvariate(math.log(self.median), self.sigma)


class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 in a background thread.

    Attributes:
        latency: seconds per chat request (a number or a `Latency`).
        seed: seeds latencies and injected errors.
        max_concurrency: chat requests served at once; more get 429 + `Retry-After`.
        error_rate: fraction of chat requests answered 500.
        rate_limit_rate: fraction of chat requests answered 429 (+ `Retry-After`).
        retry_after: the `Retry-After` seconds sent with every 429.
        api_key: when set, requests without `Authorization: Bearer <api_key>` get 401.
        models: the model names `/v1/models` lists; other models get 404 (None: any).
        batch_seconds: how long a `/v1/batches` job stays "in_progress".
        quota: `(requests, seconds)`: at most `requests` chat requests per window of
            `seconds`, as a provider's requests-per-minute quota; every chat answer
            carries `x-ratelimit-{limit,remaining,reset}-requests` as OpenAI's do, and a
            request over the quota gets 429 with them and `Retry-After` (None: no quota).
        port: 0 picks a free port.
    """

    def __init__(
        self,
        latency: float | Latency = 0.0,
        seed: int = 0,
        max_concurrency: int | None = None,
        error_rate: float = 0.0,
        rate_limit_rate: float = 0.0,
        retry_after: float = 0.05,
        api_key: str | None = None,
        models: list[str] | None = None,
        batch_seconds: float = 0.0,
        quota: tuple[int, float] | None = None,
        port: int = 0,
    ) -> None:
        self.latency = latency if isinstance(latency, Latency) else Latency.fixed(latency)
        self.seed = seed
        self.max_concurrency = max_concurrency
        self.error_rate = error_rate
        self.rate_limit_rate = rate_limit_rate
        self.retry_after = retry_after
        self.api_key = api_key
        self.models = models
        self.batch_seconds = batch_seconds
        self.quota = quota
        self._quota_started = time.monotonic()
        self._quota_window, self._quota_used = 0, 0
        self._port = port
        self.requests: list[dict[str, Any]] = []
        """The log: one dict per request (method, path, status, latency, body, started,
        headers but `Authorization`)."""
        self.in_flight = 0
        self.max_in_flight = 0
        """The most chat requests ever served at the same time."""
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._forced: deque[tuple[int | str, float | None]] = deque()
        self._files: dict[str, dict[str, Any]] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", self._port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>/v1`, what `OpenAILLM(base_url=...)` takes."""
        if self._server is None:
            raise RuntimeError("FakeOpenAIServer is not started; use it as a context manager.")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # -- test controls ------------------------------------------------------------------

    def fail_next(self, status: int | str, times: int = 1, retry_after: float | str | None = None) -> None:
        """Answer the next `times` chat requests with `status` (an HTTP code, or
        "timeout" to hang for `retry_after` seconds, default 30, before answering 200);
        a 429's or 5xx's `Retry-After` is `retry_after` (seconds, or text sent as it is).
        Requests in a batch job count too, in the job's order, when the job completes: a
        code other than 200 is that request's `status_code` in the output file, as
        OpenAI reports a request of a batch that failed ("timeout" answers 200)."""
        with self._lock:
            for _ in range(times):
                self._forced.append((status, retry_after))

    def batch_inputs(self) -> list[list[dict[str, Any]]]:
        """The request bodies of every uploaded batch-job input file, in upload order."""
        with self._lock:
            files = [f for f in self._files.values() if f["purpose"] == "batch"]
        return [[json.loads(line)["body"] for line in f["_content"].decode().splitlines() if line.strip()]
                for f in files]

    def chat_requests(self, status: int | None = None) -> list[dict[str, Any]]:
        """Logged `/v1/chat/completions` requests, optionally only those answered `status`."""
        with self._lock:
            return [
                r for r in self.requests
                if r["path"].endswith("/chat/completions") and (status is None or r["status"] == status)
            ]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight = 0

    # -- chat -----------------------------------------------------------------------------

    def _decide(self, body: dict[str, Any]) -> tuple[int | str, float, float | None]:
        """(status or "timeout", latency, retry_after) for one chat request."""
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._lock:
            seen = self._seen.get(digest, 0)
            self._seen[digest] = seen + 1
            forced = self._forced.popleft() if self._forced else None
        rng = random.Random(f"{self.seed}:{digest}:{seen}")
        latency = self.latency.draw(rng)
        roll = rng.random()
        text = _all_text(body)
        directive = dict(_DIRECTIVE.findall(text))
        if "hang" in directive:
            latency = float(directive["hang"])
        if forced is not None:
            status, extra = forced
            if status == "timeout":
                return "timeout", extra if extra is not None else 30.0, None
            return int(status), latency, extra
        if "status" in directive:
            return int(float(directive["status"])), latency, None
        if roll < self.rate_limit_rate:
            return 429, latency, None
        if roll < self.rate_limit_rate + self.error_rate:
            return 500, latency, None
        return 200, latency, None

    def _enter(self) -> bool:
        with self._lock:
            if self.max_concurrency is not None and self.in_flight >= self.max_concurrency:
                return False
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return True

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _take_quota(self) -> tuple[bool, dict[str, str]]:
        """Count one chat request against the quota: (whether it is within it, the
        `x-ratelimit-*` headers to answer with)."""
        if self.quota is None:
            return True, {}
        allowed, seconds = self.quota
        with self._lock:
            elapsed = time.monotonic() - self._quota_started
            window = int(elapsed // seconds)
            if window != self._quota_window:
                self._quota_window, self._quota_used = window, 0
            within = self._quota_used < allowed
            self._quota_used += within
            remaining = allowed - self._quota_used
        reset = (window + 1) * seconds - elapsed
        return within, {
            "x-ratelimit-limit-requests": str(allowed),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{math.ceil(reset * 1000)}ms",  # never before the reset
        }

    def _log(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    # -- batches --------------------------------------------------------------------------

    def _batch_view(self, batch: dict[str, Any]) -> dict[str, Any]:
        if batch["status"] == "in_progress" and time.time() - batch["created_at"] >= self.batch_seconds:
            self._complete_batch(batch)
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _complete_batch(self, batch: dict[str, Any]) -> None:
        lines, failed = [], 0
        for line in self._files[batch["input_file_id"]]["_content"].decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            status = self._batch_item_status(item["body"])
            failed += status != 200
            body = completion(item["body"]) if status == 200 else {
                "error": {"message": f"Injected error {status}.", "type": "injected", "code": "injected", "param": None}
            }
            lines.append(json.dumps({
                "id": f"batch_req_{uuid.uuid4().hex[:12]}",
                "custom_id": item["custom_id"],
                "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": body},
                "error": None,
            }))
        output = self._new_file(("\n".join(lines) + "\n").encode(), "batch_output", "output.jsonl")
        batch.update(status="completed", output_file_id=output["id"], completed_at=int(time.time()),
                     request_counts={"total": len(lines), "completed": len(lines) - failed, "failed": failed})

    def _batch_item_status(self, body: dict[str, Any]) -> int:
        """The status of one request of a batch job: a `fail_next` code, else a
        `[[status=N]]` directive, else 200."""
        with self._lock:
            forced = self._forced.popleft() if self._forced else None
        if forced is not None and forced[0] != "timeout":
            return int(forced[0])
        directive = dict(_DIRECTIVE.findall(_all_text(body)))
        return int(float(directive["status"])) if "status" in directive else 200

    def _new_file(self, content: bytes, purpose: str, filename: str) -> dict[str, Any]:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        record = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                  "filename": filename, "purpose": purpose, "status": "processed", "_content": content}
        with self._lock:
            self._files[file_id] = record
        return record


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping never blocks stop()
    request_queue_size = 1024  # the listen backlog: hundreds of clients connect at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that was killed or gave up (a timeout) resets its connection: that
        # is what tests do on purpose, not a server error worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Routes one HTTP request of the fake server; all state lives on `fake`."""

    fake: FakeOpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers and the openai client use

    def log_message(self, format: str, *args: Any) -> None:  # no stderr noise in tests
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        started = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0].rstrip("/")
        entry: dict[str, Any] = {
            "method": method, "path": path, "started": started, "latency": 0.0,
            # What the client sent besides its key, for tests of headers.
            "headers": {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"},
        }
        self._entry, self._logged = entry, False
        try:
            if self.fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {self.fake.api_key}":
                self._error(401, "Incorrect API key provided.", "invalid_api_key")
                entry["status"] = 401
            elif method == "POST" and path.endswith("/chat/completions"):
                entry.update(self._chat(raw, completion))
            elif method == "POST" and path.endswith("/completions"):
                entry.update(self._chat(raw, text_completion))
            elif method == "GET" and path.endswith("/models"):
                names = self.fake.models or ["fake-model"]
                self._json(200, {"object": "list", "data": [
                    {"id": n, "object": "model", "created": 0, "owned_by": "fake"} for n in names]})
                entry["status"] = 200
            elif path.endswith("/files") and method == "POST":
                entry["status"] = self._upload(raw)
            elif "/files/" in path and path.endswith("/content"):
                entry["status"] = self._file_content(path.split("/")[-2])
            elif "/files/" in path:
                entry["status"] = self._file(path.split("/")[-1])
            elif path.endswith("/batches") and method == "POST":
                entry["status"] = self._create_batch(json.loads(raw))
            elif "/batches/" in path:
                entry["status"] = self._get_batch(path.split("/")[-1])
            else:
                self._error(404, f"Unknown route {method} {path}", "not_found")
                entry["status"] = 404
        except (BrokenPipeError, ConnectionResetError):
            entry["status"] = "disconnected"
        if not self._logged:  # no answer went out (the client went away first)
            self.fake._log(entry)

    def _chat(self, raw: bytes, answer: Any) -> dict[str, Any]:
        """A chat or text completion: `answer` makes the body of a 200."""
        body = json.loads(raw)
        fake = self.fake
        if fake.models is not None and body.get("model") not in fake.models:
            self._entry.update({"status": 404, "body": body})
            self._error(404, f"The model {body.get('model')!r} does not exist.", "model_not_found")
            return {"status": 404, "body": body}
        within_quota, quota_headers = fake._take_quota()
        if not within_quota:
            self._entry.update({"status": 429, "body": body, "reason": "quota"})
            reset = quota_headers["x-ratelimit-reset-requests"]
            self._error(429, "Rate limit reached for requests.", "rate_limit_exceeded",
                        headers={**quota_headers, "Retry-After": _seconds(float(reset[:-2]) / 1000)})
            return {"status": 429, "body": body, "reason": "quota"}
        if not fake._enter():
            self._entry.update({"status": 429, "body": body, "reason": "concurrency"})
            self._error(429, "Too many concurrent requests.", "rate_limit_exceeded",
                        headers={"Retry-After": _seconds(fake.retry_after)})
            return {"status": 429, "body": body, "reason": "concurrency"}
        try:
            status, latency, retry_after = fake._decide(body)
            time.sleep(latency)
        finally:
            # The request is done before its answer is on the wire: a client that frees its
            # slot on the answer and sends at once must not find this one still counted.
            fake._leave()
        if status == "timeout":
            status = 200
        self._entry.update({"status": status, "body": body, "latency": latency})
        if status == 200:
            self._json(200, answer(body), quota_headers)
        elif status == 429:
            self._error(429, "Rate limit reached.", "rate_limit_exceeded",
                        headers={"Retry-After": _seconds(retry_after or fake.retry_after)})
        else:
            self._error(int(status), f"Injected error {status}.", "injected")
        return {"status": status, "body": body, "latency": latency}

    def _upload(self, raw: bytes) -> int:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
        )
        content, purpose, filename = b"", "batch", "upload.jsonl"
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "file":
                content = part.get_payload(decode=True) or b""
                filename = part.get_filename() or filename
            elif name == "purpose":
                purpose = (part.get_payload(decode=True) or b"batch").decode()
        record = self.fake._new_file(content, purpose, filename)
        self._json(200, {k: v for k, v in record.items() if not k.startswith("_")})
        return 200

    def _file(self, file_id: str) -> int:
        record = self.fake._files.get(file_id)
        if record is None:
            self._error(404, f"No file {file_id!r}.", "not_found")
            return 404
        self._json(200, {k: v for k, v in record.items() if not k.startswith("_")})
        return 200

    def _file_content(self, file_id: str) -> int:
        record = self.fake._files.get(file_id)
        if record is None:
            self._error(404, f"No file {file_id!r}.", "not_found")
            return 404
        self._send(200, record["_content"], "application/octet-stream")
        return 200

    def _create_batch(self, body: dict[str, Any]) -> int:
        if body.get("input_file_id") not in self.fake._files:
            self._error(400, f"No input file {body.get('input_file_id')!r}.", "invalid_request")
            return 400
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        batch = {
            "id": batch_id, "object": "batch", "endpoint": body.get("endpoint", "/v1/chat/completions"),
            "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window", "24h"),
            "status": "in_progress", "created_at": int(time.time()), "output_file_id": None,
            "error_file_id": None, "metadata": body.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        batch["created_at"] = time.time()
        with self.fake._lock:
            self.fake._batches[batch_id] = batch
        self._json(200, {**self.fake._batch_view(batch), "created_at": int(batch["created_at"])})
        return 200

    def _get_batch(self, batch_id: str) -> int:
        batch = self.fake._batches.get(batch_id)
        if batch is None:
            self._error(404, f"No batch {batch_id!r}.", "not_found")
            return 404
        self._json(200, {**self.fake._batch_view(batch), "created_at": int(batch["created_at"])})
        return 200

    # -- responses ----------------------------------------------------------------------

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _error(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": code, "code": code, "param": None}}, headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        # Logged before the answer is written: a client that has its answer finds its
        # request in `.requests` (the test reading the log right after a call included).
        if not self._logged:
            self._entry.setdefault("status", status)
            self.fake._log(self._entry)
            self._logged = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def _seconds(value: float | str) -> str:
    """A `Retry-After` value: seconds, or a test's own text (an HTTP date, garbage)."""
    return value if isinstance(value, str) else f"{value:g}"


def _all_text(body: dict[str, Any]) -> str:
    if isinstance(body.get("prompt"), str):  # a text completion
        return body["prompt"]
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content")
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return "\n".join(parts)


def _last_user_text(body: dict[str, Any]) -> str:
    if isinstance(body.get("prompt"), str):  # a text completion
        return body["prompt"]
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def _tokens(text: str) -> int:
    return len(text.split())


def completion(body: dict[str, Any]) -> dict[str, Any]:
    """The deterministic chat completion the fake server answers `body` with."""
    prompt = _last_user_text(body)
    response_format = body.get("response_format") or {}
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    choices = []
    for index in range(int(body.get("n") or 1)):
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            content = json.dumps(instance_for(schema, prompt, schema))
        elif response_format.get("type") == "json_object":
            content = json.dumps({"answer": f"echo: {prompt}"})
        else:
            words = f"echo: {prompt}".split()
            content = " ".join(words[:max_tokens] if max_tokens else words)
        choices.append({"index": index, "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop", "logprobs": _logprobs(content, body)})
    prompt_tokens = _tokens(_all_text(body))
    completion_tokens = sum(_tokens(c["message"]["content"]) for c in choices)
    return {
        "id": "chatcmpl-" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24],
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "fake-model"),
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def text_completion(body: dict[str, Any]) -> dict[str, Any]:
    """The deterministic text completion (`/v1/completions`) the fake server answers
    `body` with: the chat answer's text, after the prompt when `echo` asks for it."""
    chat = completion(body)
    choices = []
    for choice in chat["choices"]:
        generated = choice["message"]["content"]
        text = body["prompt"] + generated if body.get("echo") else generated
        choices.append({"index": choice["index"], "text": text, "finish_reason": "stop",
                        "logprobs": _legacy_logprobs(generated, body)})
    return {**chat, "id": "cmpl-" + chat["id"].split("-", 1)[1], "object": "text_completion", "choices": choices}


def _legacy_logprobs(content: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The completions API's `choice.logprobs` when `logprobs` (a count) asks for them:
    per word of `content`, a dict of that many alternatives (the word first)."""
    top = body.get("logprobs")
    if not top:
        return None
    words = content.split()
    values = [-0.1 * (position + 1) for position in range(len(words))]
    return {
        "tokens": words,
        "token_logprobs": values,
        "top_logprobs": [
            {word: value, **{f"{word}~{k}": value - k for k in range(1, int(top))}}
            for word, value in zip(words, values, strict=True)
        ],
        "text_offset": [content.find(word) for word in words],
    }


def _logprobs(content: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's `choice.logprobs` when the request asks for them: one entry per word of
    `content`, each with `top_logprobs` alternatives (the word first), fixed values."""
    if not body.get("logprobs"):
        return None
    top = int(body.get("top_logprobs") or 0)
    entries = []
    for position, word in enumerate(content.split()):
        logprob = -0.1 * (position + 1)
        alternatives = [{"token": word, "logprob": logprob, "bytes": None}]
        alternatives += [{"token": f"{word}~{k}", "logprob": logprob - k, "bytes": None} for k in range(1, top)]
        entries.append({"token": word, "logprob": logprob, "bytes": None, "top_logprobs": alternatives[:top]})
    return {"content": entries, "refusal": None}


def instance_for(schema: dict[str, Any], text: str, root: dict[str, Any], name: str = "") -> Any:
    """A value valid for `schema` (the common JSON Schema subset LLM servers accept),
    derived deterministically from `text`."""
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return instance_for(target, text, root, name)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][_pick(text, name, len(schema["enum"]))]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return instance_for(options[0], text, root, name)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {key: instance_for(sub, text, root, key) for key, sub in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [instance_for(schema.get("items") or {}, text, root, f"{name}{i}") for i in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 10))
        if "exclusiveMinimum" in schema:
            low += 1
        if "exclusiveMaximum" in schema:
            high -= 1
        value = int(low) + _pick(text, name, int(high) - int(low) + 1)
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return _pick(text, name, 2) == 1
    if kind == "null":
        return None
    return f"{name or 'text'} for: {text}"[: schema.get("maxLength", 10_000)]


def _pick(text: str, name: str, n: int) -> int:
    return int(hashlib.sha256(f"{name}:{text}".encode()).hexdigest(), 16) % max(n, 1)
