"""`OpenAILLM`: one client for every OpenAI-compatible server (OpenAI, vLLM, TGI,
llama.cpp, Ollama, LiteLLM), on the official async `openai` client.

Each generation is one chat-completion call (a text completion when the input is a
`str`, as distilabel's) that goes: call record (answered
before? then nothing is sent) -> the endpoint's shared limit (a slot, and the
requests/tokens it costs per minute) -> the request, with the client's own retries
off -> our retry policy (`retry.py`) and AIMD on 429 (`limits.py`; a 429 AIMD answered
by lowering the concurrency is retried without counting) -> the record.
Offline batch generation (`/v1/files` + `/v1/batches`) is here too; how a step
suspends around it lives in `tasks.py`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import difflib
import io
import json
import logging
import os
import random
import threading
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_serializer,
    field_validator,
)

from stillhouse.core import RuntimeParameter
from stillhouse.core.runtime import RuntimeParametersMixin
from stillhouse.core.serializable import Serializable
from stillhouse.llms import structured
from stillhouse.llms.errors import LLMAuthenticationError, LLMCallError, mask, mask_key
from stillhouse.llms.limits import Aimd, endpoint_limit
from stillhouse.llms.record import CallRecord, request_key
from stillhouse.llms.retry import RetryPolicy, quota_wait, retry_after_seconds, transient_reason

if TYPE_CHECKING:
    # `openai` and `httpx` are imported when a request is made, not with the class:
    # loading the llms plugin (which registers the tasks) must stay cheap.
    from collections.abc import Awaitable

    import openai

logger = logging.getLogger("stillhouse.llms")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MAX_NEW_TOKENS = 128
"""distilabel's default `max_new_tokens`, sent as `max_tokens` when none is given."""

QUOTA_PAUSE_SLACK = 0.05
"""Seconds by which a quota's reset must outlast our last pause to pause again."""

LONG_QUOTA_PAUSE = 10.0
"""A quota pause this long (seconds) or longer is logged as a warning: the run waits on it."""

_GENERATION_ARGS = {
    "max_new_tokens": "max_tokens",
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "logprobs": "logprobs",
    "top_logprobs": "top_logprobs",
    "response_format": "response_format",
    "extra_body": "extra_body",
    "echo": "echo",
}
"""Generation arguments we accept (distilabel's names) -> the request's field names."""

_CHAT_ONLY = {"echo"}
"""Arguments a chat request leaves out (distilabel: `echo` is for text input only)."""

_TEXT_ONLY_REFUSED = {"response_format"}
"""Arguments the completions API has no field for."""

GenerateOutput = dict[str, Any]
"""distilabel's `{"generations": [...], "statistics": {"input_tokens": [...], "output_tokens": [...]}}`,
with `"logprobs"` (per generation, per token, the top alternatives) when they were asked for."""


def check_generation_kwargs(args: dict[str, Any], what: str = "generation_kwargs", step_name: str | None = None) -> None:
    """Raise `ValueError` naming `what`, the unknown names in `args` (with the closest known
    name) and the known ones, when `args` has a name OpenAILLM does not send."""
    unknown = sorted(set(args) - set(_GENERATION_ARGS), key=str)
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), list(_GENERATION_ARGS), n=1, cutoff=0.6)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    where = f"Step {step_name!r}: " if step_name else ""
    raise ValueError(
        f"{where}{what} has unknown name(s) {', '.join(hints)}. Known: "
        f"{', '.join(map(repr, sorted(_GENERATION_ARGS)))}. Fix or remove the name."
    )


def _env_secret(name: str) -> SecretStr | None:
    """The environment variable `name` as a secret, None when unset or empty."""
    value = os.environ.get(name)
    return SecretStr(value) if value else None


def _optional(kind: Any) -> Any:
    """`RuntimeParameter[kind] | None` without the `Field()` inside the union that makes
    pydantic warn on every subclass: the same marker, so core sees an optional runtime
    parameter. (Core could offer this as `OptionalRuntimeParameter`.)"""
    inner, *_, marker = get_args(RuntimeParameter[kind])
    return Annotated[inner, marker] | None


class OpenAILLM(Serializable, RuntimeParametersMixin, BaseModel):
    """An LLM behind any OpenAI-compatible chat-completions endpoint.

    Attributes:
        model: The model name the server knows (`gpt-4o-mini`, `meta-llama/...`, `llama3`).
        base_url: The server's `/v1` URL; default env `OPENAI_BASE_URL`, else OpenAI's.
        api_key: The API key; default env `OPENAI_API_KEY`. Never written or logged.
        default_headers: HTTP headers sent with every request (a gateway's key, an
            organisation); secrets like `api_key`: never written or logged.
        timeout: Seconds one request may take before it counts as a timeout (and is retried).
        max_retries: Retries of a transient failure (429, 5xx, timeout, connection) per call;
            a 429 after which the endpoint's concurrency came down is not counted.
        generation_kwargs: temperature, max_new_tokens, top_p, stop, seed, ... for every call;
            an unknown name is refused when it is set.
        structured_output: A pydantic model class or JSON schema (or distilabel's
            `{"schema": ..., "format": "json", "mode": ...}`): answers are JSON valid for it.
        max_concurrency: Requests in flight to this endpoint, across the whole run.
        requests_per_minute: Requests per minute to this endpoint, across the whole run.
        tokens_per_minute: Estimated tokens per minute to this endpoint, across the whole run.
        use_offline_batch_generation: Send a step's rows through /v1/files + /v1/batches.
        offline_batch_generation_block_until_done: Poll a batch job every this many seconds in the same run instead of suspending.
        jobs_ids: distilabel's record of offline batch jobs, accepted so its scripts and
            files load; stillhouse keeps each batch's job in the step's cache instead, so
            ids given here are not polled (a warning says so).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True, extra="forbid")

    exclude_from_signature: ClassVar[set[str]] = {
        "timeout", "max_retries", "max_concurrency", "requests_per_minute", "tokens_per_minute",
        "offline_batch_generation_block_until_done", "jobs_ids",
    }
    """How answers arrive, not what they are: changing one keeps the step's cache and
    its call record (core leaves a field's model's `exclude_from_signature` out of the
    step's signature)."""

    model: str
    # None: env OPENAI_BASE_URL (read when the LLM is created, so it is part of the
    # step's signature), else OpenAI's own URL.
    base_url: _optional(str) = None
    # Default: env OPENAI_API_KEY when the LLM is made, as in distilabel. exclude=True (and
    # SecretStr): never in pipeline.yaml, dumps, signatures or logs, so a pipeline loaded
    # from its file takes the key of the environment that loads it; an LLM made without
    # one reads the env of the process that sends (`_key`).
    api_key: _optional(SecretStr) = Field(default_factory=lambda: _env_secret("OPENAI_API_KEY"), exclude=True)
    # Headers often carry credentials (Azure's `api-key`, a gateway's key): secrets too.
    default_headers: _optional(dict[str, SecretStr]) = Field(default=None, exclude=True)
    timeout: RuntimeParameter[float] = Field(default=120.0)
    max_retries: RuntimeParameter[int] = Field(default=6)
    generation_kwargs: RuntimeParameter[dict[str, Any]] = Field(default={})
    structured_output: dict[str, Any] | type[BaseModel] | None = None
    max_concurrency: RuntimeParameter[int] = Field(default=64)
    requests_per_minute: _optional(int) = None
    tokens_per_minute: _optional(int) = None
    use_offline_batch_generation: bool = False
    offline_batch_generation_block_until_done: _optional(float) = None
    jobs_ids: tuple[str, ...] | None = None

    _clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = PrivateAttr(
        default_factory=weakref.WeakKeyDictionary
    )
    _clients_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = PrivateAttr(default=None)
    _record: CallRecord | None = PrivateAttr(default=None)
    _limit: Any = PrivateAttr(default=None)
    _aimd: Aimd | None = PrivateAttr(default=None)
    _rng: random.Random = PrivateAttr(default_factory=random.Random)
    _schema: dict[str, Any] | None = PrivateAttr(default=None)
    _output_model: type[BaseModel] | None = PrivateAttr(default=None)
    _auth_failed: tuple[int, str] | None = PrivateAttr(default=None)  # a refused key: (status, why)
    _closing: Any = PrivateAttr(default=None)
    _stats: Counter[str] = PrivateAttr(default_factory=Counter)
    _quota_paused_until: float = PrivateAttr(default=0.0)  # monotonic: when our last pause ends

    @field_validator("structured_output")
    @classmethod
    def _check_structured_output(cls, value: Any) -> Any:
        if value is not None:
            structured.normalize(value)
        return value

    @field_validator("generation_kwargs")
    @classmethod
    def _check_generation_kwargs(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Here, not per request: a misspelt name fails the LLM's construction (or the
        # runtime parameter, which core reports with the step's name), before any worker.
        check_generation_kwargs(value or {})
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        return SecretStr(value) if isinstance(value, str) else value

    @field_validator("default_headers", mode="before")
    @classmethod
    def _secret_headers(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: SecretStr(v) if isinstance(v, str) else v for name, v in value.items()}
        return value

    @field_serializer("structured_output")
    def _dump_structured_output(self, value: Any) -> Any:
        return None if value is None else structured.normalize(value)[0]

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        if self.base_url is None:
            self.base_url = os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        if self.structured_output is not None:
            self._schema, self._output_model = structured.normalize(self.structured_output)
        if self.jobs_ids:
            logger.warning(
                "OpenAILLM(jobs_ids=%r): stillhouse keeps each batch's offline job in the step's "
                "cache and resumes it when the pipeline runs again; these ids are not polled.",
                self.jobs_ids,
            )

    def use_structured_output(self, schema: dict[str, Any] | type[BaseModel]) -> None:
        """Answer in `schema` from now on (a task's default structured output)."""
        self.structured_output = schema
        self._schema, self._output_model = structured.normalize(schema)

    def _fresh_private(self) -> dict[str, Any]:
        """This instance's private state with nothing tied to a process, thread or loop."""
        return {**(self.__pydantic_private__ or {}), "_clients": weakref.WeakKeyDictionary(),
                "_clients_lock": threading.Lock(), "_loop": None, "_record": None, "_limit": None,
                "_aimd": None, "_closing": None, "_auth_failed": None, "_stats": Counter(),
                "_quota_paused_until": 0.0}

    def __getstate__(self) -> dict[Any, Any]:
        # Clients, loops, locks and open files stay in the process that made them.
        state = super().__getstate__()
        state["__pydantic_private__"] = {**self._fresh_private(), "_clients_lock": None}
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._clients_lock = threading.Lock()

    def replica(self) -> OpenAILLM:
        """A copy with the same settings and no clients, record or limit of its own yet:
        what each replica of a step loads (threaded replicas share their step's fields)."""
        copy = self.model_copy()
        copy.__pydantic_private__ = self._fresh_private()
        return copy

    # -- identity -------------------------------------------------------------------------

    @property
    def call_stats(self) -> Counter[str]:
        """This instance's calls: `sent`, `recorded`, `retry_<reason>`, `failed_<reason>`."""
        return self._stats

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def endpoint(self) -> str:
        return f"{self.base_url} (model {self.model!r})"

    def _key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY")

    def _headers(self) -> dict[str, str]:
        return {name: value.get_secret_value() for name, value in (self.default_headers or {}).items()}

    def _mask(self, text: str) -> str:
        for secret in (self._key(), *self._headers().values()):
            text = mask(text, secret)
        return text

    # -- lifecycle --------------------------------------------------------------------------

    def load(self, record_dir: Path | None = None) -> None:
        """Join the endpoint's shared limit; open the call record in `record_dir`, if any."""
        ceiling = self.max_concurrency or 64
        self._limit = endpoint_limit(
            self.base_url, self.model, ceiling, self.requests_per_minute, self.tokens_per_minute
        )
        self._aimd = Aimd(self._limit, ceiling)
        if record_dir is not None:
            self._record = CallRecord(Path(record_dir))
            logger.info("%d recorded LLM calls found in %s", len(self._record), record_dir)

    def unload(self) -> None:
        """Close the record and the clients. Called on a running loop (an async step's
        worker), the loop's client is closed by a task that loop runs before it stops."""
        if self._stats:
            logger.info("LLM calls to %s: %s", self.endpoint, ", ".join(f"{k} {v}" for k, v in sorted(self._stats.items())))
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running in self._clients:
            self._closing = running.create_task(self.aclose())  # referenced until it ran
        if self._record is not None:
            self._record.close()
            self._record = None
        if self._loop is not None and not self._loop.is_closed():
            self.run_sync(self.aclose())
            self._loop.close()
        self._loop = None

    def run_sync(self, awaitable: Awaitable[Any]) -> Any:
        """Run `awaitable` from synchronous code on this LLM's own loop, the one `generate`
        uses and whose client `unload` closes; in a thread of its own when the calling
        thread already runs a loop (a notebook's cell)."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # none runs here: ours can
            return self._loop.run_until_complete(awaitable)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stillhouse-llm") as pool:
            return pool.submit(self._loop.run_until_complete, awaitable).result()

    async def aclose(self) -> None:
        """Close the client of the running event loop (call it when you used `agenerate`
        from your own loop and are done)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()

    def check_auth(self, step_name: str) -> None:
        """Fail fast on a refused key: one GET /models. Raises `LLMAuthenticationError` on
        401/403; any other outcome (404, down, slow) is left to the calls themselves."""
        import httpx

        key = self._key()
        try:
            response = httpx.get(
                f"{self.base_url.rstrip('/')}/models",
                headers={**self._headers(), **({"Authorization": f"Bearer {key}"} if key else {})},
                timeout=min(self.timeout, 10.0),
            )
        except httpx.HTTPError:
            return
        if response.status_code in (401, 403):
            raise self._auth_error(step_name, response.status_code, response.text)

    def _auth_error(self, step_name: str | None, status: int, detail: str) -> LLMAuthenticationError:
        who = f"Step {step_name!r}: the" if step_name else "The"
        return LLMAuthenticationError(
            f"{who} endpoint {self.endpoint} refused the API key "
            f"{mask_key(self._key())} (HTTP {status}): {self._mask(detail)[:300]}. Set a valid key "
            "with the OPENAI_API_KEY environment variable or the step's `llm.api_key` runtime parameter.",
            step_name=step_name, endpoint=self.endpoint, status=status,
        )

    def _client(self) -> openai.AsyncOpenAI:
        import openai

        loop = asyncio.get_running_loop()
        with self._clients_lock:
            client = self._clients.get(loop)
            if client is None:
                client = openai.AsyncOpenAI(
                    base_url=self.base_url,
                    api_key=self._key() or "no-key",
                    default_headers=self._headers() or None,
                    timeout=self.timeout,
                    max_retries=0,  # our retry policy, not the client's
                )
                self._clients[loop] = client
            return client

    # -- generation ---------------------------------------------------------------------------

    def get_generation_kwargs(self) -> dict[str, Any]:
        return dict(self.generation_kwargs or {})

    def build_request(self, input: list[dict[str, Any]] | str, **kwargs: Any) -> dict[str, Any]:
        """The request body for `input` (generation_kwargs, then `kwargs`): a chat
        completion for a conversation, a text completion (`/v1/completions`) for a `str`."""
        args = {**self.get_generation_kwargs(), **kwargs}
        check_generation_kwargs(args, "generation argument(s) of OpenAILLM")
        if isinstance(input, str):
            return self._text_request(input, args)
        request: dict[str, Any] = {"model": self.model, "messages": input}
        for name, value in args.items():
            if value is not None and name not in _CHAT_ONLY:
                request[_GENERATION_ARGS[name]] = value
        request.setdefault("max_tokens", DEFAULT_MAX_NEW_TOKENS)
        if self._schema is not None and "response_format" not in request:
            request["response_format"] = structured.response_format(self._schema)
        return request

    def _text_request(self, prompt: str, args: dict[str, Any]) -> dict[str, Any]:
        """A text completion's body. Its `logprobs` is a count of alternatives per token:
        `top_logprobs`, else 1 when `logprobs` is asked for."""
        refused = sorted(name for name in _TEXT_ONLY_REFUSED if args.get(name) is not None)
        if refused or self._schema is not None:
            what = f"generation argument(s) {refused}" if refused else "`structured_output`"
            raise ValueError(
                f"OpenAILLM({self.model!r}): a text input (a `str`, sent to /v1/completions) cannot "
                f"take {what}: the completions API has no response format. Pass the input as a "
                "conversation ([{'role': 'user', 'content': ...}]) for a chat completion instead."
            )
        request: dict[str, Any] = {"model": self.model, "prompt": prompt}
        for name, value in args.items():
            if value is not None and name not in ("logprobs", "top_logprobs"):
                request[_GENERATION_ARGS[name]] = value
        count = args.get("top_logprobs") or (1 if args.get("logprobs") else None)
        if count:
            request["logprobs"] = count
        request.setdefault("max_tokens", DEFAULT_MAX_NEW_TOKENS)
        return request

    def generate(self, inputs: list[list[dict[str, Any]]] | list[str], num_generations: int = 1, **kwargs: Any) -> list[GenerateOutput]:
        """`agenerate` for every input, concurrently, from synchronous code."""
        if self._limit is None:
            self.load()

        async def run_all() -> list[GenerateOutput]:
            return list(await asyncio.gather(*(self.agenerate(i, num_generations, **kwargs) for i in inputs)))

        return self.run_sync(run_all())

    async def agenerate(self, input: list[dict[str, Any]] | str, num_generations: int = 1, **kwargs: Any) -> GenerateOutput:
        """`num_generations` answers to one conversation (or text prompt): one call per generation."""
        if self._limit is None:
            self.load()
        request = self.build_request(input, **kwargs)
        responses = await asyncio.gather(*(self.call(request, index) for index in range(num_generations)))
        return self.output_from(responses, request)

    def output_from(self, responses: list[dict[str, Any]], request: dict[str, Any]) -> GenerateOutput:
        """distilabel's `GenerateOutput` from completion bodies (one per generation)."""
        generations: list[str | None] = []
        input_tokens: list[int] = []
        output_tokens: list[int] = []
        logprobs: list[Any] = []
        for response in responses:
            choice = (response.get("choices") or [{}])[0]
            if (token_logprobs := _top_logprobs(choice)) is not None:
                logprobs.append(token_logprobs)
            text = choice.get("text") if "prompt" in request else (choice.get("message") or {}).get("content")
            if text is None:
                logger.warning("No content from %s (finish reason %r)", self.endpoint, choice.get("finish_reason"))
            if self._schema is not None and request.get("response_format", {}).get("type") == "json_schema":
                try:
                    text = structured.parse(text, self._schema, self._output_model)
                except structured.StructuredOutputError as exc:
                    self._stats["failed_schema"] += 1
                    raise LLMCallError(
                        f"{self.endpoint}: {exc}", endpoint=self.endpoint, status=200, reason="schema", attempts=1
                    ) from None
            usage = response.get("usage") or {}
            generations.append(text)
            input_tokens.append(int(usage.get("prompt_tokens") or 0))
            output_tokens.append(int(usage.get("completion_tokens") or 0))
        output: GenerateOutput = {
            "generations": generations, "statistics": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
        if logprobs:  # asked for with `logprobs` / `top_logprobs`, as distilabel returns them
            output["logprobs"] = logprobs
        return output

    def recorded(self, request: dict[str, Any], generation: int = 0) -> dict[str, Any] | None:
        """The recorded answer to `request` (its `generation`-th), if a run paid for it
        already; None without a record (no cache) or a usable answer."""
        if self._record is None:
            return None
        key = request_key(request, generation, self.base_url)
        answer = self._record.get(key)
        while answer is not None and not self._usable(request, answer):
            self._record.discard(key)  # recorded before answers were checked: ask again
            answer = self._record.get(key)
        if answer is not None:
            self._stats["recorded"] += 1
        return answer

    def record(self, request: dict[str, Any], generation: int, response: dict[str, Any]) -> None:
        """Keep `response` as the answer to `request` (its `generation`-th), durably; an
        answer that does not fit the structured output's schema is not kept, so
        `run(retry_failed=True)` asks again."""
        if self._record is not None and self._usable(request, response):
            self._record.put(request_key(request, generation, self.base_url), response)

    def _usable(self, request: dict[str, Any], response: dict[str, Any]) -> bool:
        """Whether `response` is an answer `output_from` accepts (its structured output parses)."""
        if self._schema is None or request.get("response_format", {}).get("type") != "json_schema":
            return True
        for choice in response.get("choices") or [{}]:
            try:
                structured.parse((choice.get("message") or {}).get("content"), self._schema, self._output_model)
            except structured.StructuredOutputError:
                return False
        return True

    async def call(self, request: dict[str, Any], generation: int = 0) -> dict[str, Any]:
        """One chat (or text) completion: from the record if it was answered before, else sent with
        the limit, our retries and AIMD, then recorded.

        Every failed attempt is counted against `max_retries` but a 429 after which the
        endpoint's concurrency came down (the server refused what we sent at once, and
        AIMD has answered it): that call waits for a slot under the lower limit and goes
        again, as often as the limit comes down. The limit comes down to 1 at most, so a
        429 that goes on at the lowest concurrency is counted like any other failure."""
        recorded = self.recorded(request, generation)
        if recorded is not None:
            return recorded
        if self._auth_failed is not None:  # refused before: sending again cannot help
            raise self._auth_error(None, *self._auth_failed)
        policy = RetryPolicy(max_retries=self.max_retries if self.max_retries is not None else 6)
        costs = {"requests": 1, "tokens": _estimate_tokens(request)}
        attempt = 0  # attempts sent
        counted = 0  # failed attempts counted against `max_retries`
        while True:
            attempt += 1
            ticket = None
            ours = False  # a 429 the limit has come down for since the request went
            paused = False  # an answer that says the quota is spent (the limit waits for its reset)
            try:
                async with self._limit.slot(costs=costs):
                    if self._auth_failed is not None:  # refused while this call waited for its slot
                        raise self._auth_error(None, *self._auth_failed)
                    self._stats["sent"] += 1
                    if self._aimd is not None:
                        ticket = self._aimd.ticket()
                    # The quota and a 429 are read before the slot is given back: a pause or a
                    # lower concurrency reaches the limit before the release that would let
                    # the next request go.
                    try:
                        completions = self._client().completions if "prompt" in request else self._client().chat.completions
                        raw = await completions.with_raw_response.create(**request)
                    except Exception as exc:
                        paused = self._honour_quota(getattr(getattr(exc, "response", None), "headers", None))
                        if self._aimd is not None and transient_reason(exc) == "429":
                            ours = self._aimd.on_rate_limited(ticket)
                        raise
                    self._honour_quota(raw.headers)
                response = json.loads(raw.http_response.text)
            except LLMAuthenticationError:
                raise
            except Exception as exc:
                reason = transient_reason(exc)
                status = getattr(exc, "status_code", None)
                message = self._mask(f"{type(exc).__name__}: {exc}")
                if not ours:
                    counted += 1
                if reason is None or counted > policy.max_retries:
                    why = reason or (str(status) if status else type(exc).__name__)
                    self._stats[f"failed_{why}"] += 1
                    if status in (401, 403):  # no call can succeed: the run stops
                        self._auth_failed = (status, message)
                        error = self._auth_error(None, status, message)
                        error.attempts = attempt
                        raise error from None
                    verdict = "not retryable" if reason is None else f"still failing after {attempt} attempts"
                    raise LLMCallError(
                        f"{self.endpoint}: {message} ({verdict})",
                        endpoint=self.endpoint, status=status, reason=why, attempts=attempt,
                    ) from None
                # A 429 that paused the limit waits for the quota's reset, as every caller does;
                # a retry the lowered limit made room for waits like a first one; the rest
                # back off (or wait a longer Retry-After).
                retry_after = retry_after_seconds(exc)
                if paused and retry_after is not None:
                    delay = policy.exactly(retry_after, self._rng)
                else:
                    delay = policy.delay(1 if ours else counted, retry_after, self._rng)
                self._stats[f"retry_{reason}"] += 1
                logger.info(
                    "LLM call to %s failed (attempt %d/%d, %s%s): %s; retrying in %.2fs",
                    self.endpoint, attempt, policy.max_retries + 1 + attempt - counted, reason,
                    "; concurrency lowered, not counted" if ours else "", message[:200], delay,
                )
                await asyncio.sleep(delay)
                if reason == "429" and not ours and self._aimd is not None and self._aimd.lowered_since(ticket):
                    counted -= 1  # the limit came down while we waited: that 429 was ours too
                continue
            if self._aimd is not None:
                self._aimd.on_success(ticket)
            self.record(request, generation, response)
            return response

    def _honour_quota(self, headers: Any) -> bool:
        """When an answer says the endpoint's quota is spent (`x-ratelimit-remaining-*`
        0), pause the endpoint's shared limit until it resets: every step, replica and
        process of the run waits, instead of sending requests bound to get 429. Returns
        whether the answer said so (the limit is paused until the reset)."""
        wait = quota_wait(headers)
        if wait is None:
            return False
        now = time.monotonic()
        if now + wait <= self._quota_paused_until + QUOTA_PAUSE_SLACK:
            return True  # the answers of one window all say so: one pause is enough
        self._quota_paused_until = now + wait
        self._stats["quota_pauses"] += 1
        (logger.warning if wait >= LONG_QUOTA_PAUSE else logger.info)(
            "%s says its quota is spent: no request to it for %.2f s (x-ratelimit headers).",
            self.endpoint, wait,
        )
        self._limit.pause(wait)
        return True

    # -- offline batch generation ---------------------------------------------------------

    async def submit_batch(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        """Upload `requests` (custom ids = their positions) and start a batch job; returns
        the job's state: `{"batch_id", "input_file_id", "count"}`."""
        if any("prompt" in body for body in requests):
            raise ValueError(
                f"OpenAILLM({self.model!r}): offline batch generation sends chat completions; "
                "text inputs (a `str`) are not supported there. Format the input as a conversation."
            )
        lines = [
            json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions", "body": body})
            for i, body in enumerate(requests)
        ]
        client = self._client()
        upload = await client.files.create(
            file=("stillhouse-batch.jsonl", io.BytesIO(("\n".join(lines) + "\n").encode())), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
            metadata={"description": "stillhouse"},
        )
        logger.info("Offline batch %s submitted to %s (%d requests)", batch.id, self.endpoint, len(requests))
        return {"batch_id": batch.id, "input_file_id": upload.id, "count": len(requests)}

    async def poll_batch(self, state: dict[str, Any]) -> list[dict[str, Any] | None] | None:
        """The responses of a finished batch job (in request order; None for a request
        that failed), or None while it is still running. Raises if the job failed."""
        client = self._client()
        batch = await client.batches.retrieve(state["batch_id"])
        if batch.status in ("validating", "in_progress", "finalizing"):
            return None
        if batch.status != "completed" or not batch.output_file_id:
            raise LLMCallError(
                f"{self.endpoint}: offline batch {batch.id} ended with status {batch.status!r}.",
                endpoint=self.endpoint, status=None, reason=f"batch_{batch.status}", attempts=1,
            )
        content = await client.files.content(batch.output_file_id)
        results: list[dict[str, Any] | None] = [None] * int(state["count"])
        for line in content.text.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            response = item.get("response") or {}
            if response.get("status_code") == 200:
                results[int(item["custom_id"])] = response["body"]
        return results


def _top_logprobs(choice: dict[str, Any]) -> list[list[dict[str, Any]]] | None:
    """distilabel's logprobs of one answer: per token, its `top_logprobs` as
    `{"token", "logprob"}`; None when the answer has none."""
    legacy = (choice.get("logprobs") or {}).get("top_logprobs")
    if "text" in choice:  # a text completion: per token, {token: logprob}
        if legacy is None:
            return None
        return [None if top is None else [{"token": t, "logprob": v} for t, v in top.items()] for top in legacy]
    content = (choice.get("logprobs") or {}).get("content")
    if content is None:
        return None
    return [
        [{"token": top["token"], "logprob": top["logprob"]} for top in token.get("top_logprobs") or []]
        for token in content
    ]


def _estimate_tokens(request: dict[str, Any]) -> int:
    """What a call may cost in tokens, for tokens-per-minute budgets: ~4 characters per
    prompt token plus the most it may generate."""
    chars = len(request.get("prompt") or "")
    chars += sum(len(json.dumps(m.get("content"))) for m in request.get("messages", []))
    return chars // 4 + int(request.get("max_tokens") or DEFAULT_MAX_NEW_TOKENS)


__all__ = ["GenerateOutput", "OpenAILLM"]
