"""LLM tasks: `TextGeneration` (a Jinja2 prompt from columns) and `ChatGeneration`
(a `messages` column), as async steps with distilabel 1.5's fields and outputs.

A task turns each row into a conversation, asks its `OpenAILLM` for
`num_generations` answers (all rows of a batch concurrently; the endpoint's limit
paces them) and writes `generation` and `model_name`, plus `raw_output_<step>`,
`raw_input_<step>` and `statistics_<step>` in `stillhouse_metadata`. A row whose
call fails for good gets None outputs and `error_<step>` in its metadata; the
other rows of the batch are unaffected, and the batch is stored as failed
(`record_failure`), so `run(retry_failed=True)` sends it again, answering the calls
that succeeded from the record. Transport, retries and the call record are
the LLM's (`openai_llm.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, PositiveInt, PrivateAttr, field_validator, model_validator

from stillhouse.core import RuntimeParameter, Step, StepInput, SuspendStep
from stillhouse.core.steps.columns import METADATA_COLUMN
from stillhouse.core.typing import Row, StepColumns
from stillhouse.llms.errors import LLMAuthenticationError, LLMCallError
from stillhouse.llms.openai_llm import GenerateOutput, OpenAILLM, check_generation_kwargs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from jinja2 import Template

logger = logging.getLogger("stillhouse.llms.tasks")

ChatType = list[dict[str, Any]]

OFFLINE_POLL_SECONDS = 30.0
"""`retry_after` of a step suspended on an offline batch job: how soon
`run(wait_for_suspended=True)` asks the server again."""


class Task(Step, ABC):
    """A step that asks an LLM about each row.

    Attributes:
        llm: The `OpenAILLM` that answers.
        num_generations: Answers per row.
        group_generations: One row holding a list of `num_generations` answers (True), or one row per answer (False).
        add_raw_output: Keep the LLM's raw answer in `stillhouse_metadata["raw_output_<step>"]`.
        add_raw_input: Keep the conversation sent in `stillhouse_metadata["raw_input_<step>"]`.
        use_default_structured_output: Answer in the task's own schema
            (`get_structured_output()`) when the LLM has none (distilabel's field; the
            tasks here have no schema of their own).
        concurrency: Batches one replica keeps in flight (core's default is 16). A batch
            waits for its slowest row, so with long-tailed latencies many batches must be
            open to keep the endpoint's `max_concurrency` requests in flight; the endpoint
            limit, not this, bounds the requests.
    """

    concurrency: PositiveInt = 64
    llm: OpenAILLM
    num_generations: RuntimeParameter[int] = Field(default=1)
    group_generations: bool = False
    add_raw_output: RuntimeParameter[bool] = Field(default=True)
    add_raw_input: RuntimeParameter[bool] = Field(default=True)
    use_default_structured_output: bool = False

    def get_structured_output(self) -> dict[str, Any] | None:
        """The JSON schema this task's answers follow by default, if it has one (a task
        that judges or extracts); None here. Used with `use_default_structured_output`."""
        return None

    @abstractmethod
    def format_input(self, input: Row) -> ChatType:
        """The conversation to send for one row (OpenAI chat format)."""

    def format_output(self, output: str | None, input: Row | None = None) -> Row:
        """The output columns for one answer."""
        return {"generation": output}

    @property
    def outputs(self) -> StepColumns:
        return ["generation", "model_name"]

    # -- lifecycle --------------------------------------------------------------------------

    def load(self) -> None:
        super().load()
        # The field's validator checked the names when they were set; a dict changed in
        # place since (`llm.generation_kwargs["max_token"] = 5`) fails here, not per row.
        check_generation_kwargs(self.llm.get_generation_kwargs(), "llm.generation_kwargs", self.name)
        self.llm = self.llm.replica()  # replicas in one process must not share clients or records
        schema = self.get_structured_output()
        if self.use_default_structured_output and schema and self.llm.structured_output is None:
            self.llm.use_structured_output(schema)
        self.llm.load(record_dir=self._record_dir())
        self.llm.check_auth(self.name or type(self).__name__)

    def unload(self) -> None:
        self.llm.unload()
        super().unload()

    def _record_dir(self) -> Any:
        """The call record's folder: in the step's lasting folder, so a new version of the
        step (another field, a step before it changed) still gets the answers to the
        requests it sends again; the record is keyed by exactly what was sent."""
        folder = self.lasting_path or self.cache_path  # None when the run keeps no cache
        return None if folder is None else folder / "llm-calls"

    # -- processing -------------------------------------------------------------------------

    @property
    def is_async(self) -> bool:
        """Always: `process` returns `_Batches`, which the engine runs on the step's loop."""
        return True

    def process(self, inputs: StepInput) -> _Batches:
        """Answer every row of the batch; rows that fail get None outputs.

        The engine iterates the result asynchronously. A script may also call
        `next(task.process(rows))` after `task.load()`, as distilabel's examples do."""
        return _Batches(self._answer_batch(inputs), self.llm.run_sync)

    async def _answer_batch(self, inputs: StepInput) -> AsyncIterator[list[Row]]:
        if self.llm.use_offline_batch_generation:
            yield await self._process_offline(list(inputs))
            return
        results = await asyncio.gather(*(self._answer(row) for row in inputs))
        yield [out for rows in results for out in rows]

    async def _answer(self, row: Row) -> list[Row]:
        messages: ChatType | None = None
        try:
            messages = self.format_input(row)
            output = await self.llm.agenerate(
                messages, num_generations=self.num_generations or 1, **self.llm.get_generation_kwargs()
            )
        except LLMAuthenticationError as exc:  # a StopRun: the run stops, naming this step
            raise LLMAuthenticationError(
                f"Step {self.name!r}: {exc}", step_name=self.name, endpoint=exc.endpoint, status=exc.status,
                attempts=exc.attempts,
            ) from None
        except Exception as exc:
            return [self._failed(row, messages, exc)]
        return self._rows(row, messages, output)

    def _rows(self, row: Row, messages: ChatType, output: GenerateOutput) -> list[Row]:
        """distilabel's rows for one input: one per generation, or one grouped row."""
        generations = output["generations"]
        stats = output.get("statistics") or {}
        per_generation = [
            {key: values[i] for key, values in stats.items() if i < len(values)}
            for i in range(len(generations))
        ]
        formatted = [self.format_output(text, row) for text in generations]
        if self.group_generations:
            grouped = {key: [f.get(key) for f in formatted] for key in formatted[0]} if formatted else {}
            meta = self._metadata(row, messages, generations, {k: list(v) for k, v in stats.items()})
            return [{**row, **grouped, "model_name": self.llm.model_name, METADATA_COLUMN: meta}]
        return [
            {**row, **out, "model_name": self.llm.model_name,
             METADATA_COLUMN: self._metadata(row, messages, text, stat)}
            for out, text, stat in zip(formatted, generations, per_generation, strict=True)
        ]

    def _metadata(self, row: Row, messages: ChatType | None, raw_output: Any, statistics: Any) -> dict[str, Any]:
        meta = dict(row.get(METADATA_COLUMN) or {})
        if self.add_raw_output:
            meta[f"raw_output_{self.name}"] = raw_output
        if self.add_raw_input:
            meta[f"raw_input_{self.name}"] = messages
        if statistics:
            meta[f"statistics_{self.name}"] = statistics
        return meta

    def _failed(self, row: Row, messages: ChatType | None, exc: BaseException) -> Row:
        error = f"{type(exc).__name__}: {exc}"
        logger.warning("Step %r: a row failed; its outputs are set to None: %s", self.name, error)
        self.record_failure(error)  # the batch is stored as failed: run(retry_failed=True) sends it again
        meta = self._metadata(row, messages, None, None)
        meta[f"error_{self.name}"] = error
        nones = dict.fromkeys(self.get_outputs())
        if self.group_generations:
            nones = {key: None for key in nones}
        return {**row, **nones, METADATA_COLUMN: meta}

    # -- offline batch generation -----------------------------------------------------------

    async def _process_offline(self, inputs: list[Row]) -> list[Row]:
        """Send the batch's rows as one `/v1/batches` job; suspend the step until it is
        done (or poll in this run with `offline_batch_generation_block_until_done`).

        Answers go to the call record as a job returns them, and a request answered
        before is not sent again: a batch retried with `run(retry_failed=True)` sends
        only its rows that failed."""
        messages = [self.format_input(row) for row in inputs]
        count = self.num_generations or 1
        requests = [self.llm.build_request(m) for m in messages for _ in range(count)]
        answers = [self.llm.recorded(request, i % count) for i, request in enumerate(requests)]
        missing = [i for i, answer in enumerate(answers) if answer is None]
        state = self.resume_state
        if missing:
            job = self._job_file([requests[i] for i in missing])
            if not state:
                state = _read_job(job, missing)  # submitted by a run stopped or killed while it waited
            if not state:
                state = {**await self.llm.submit_batch([requests[i] for i in missing]), "positions": missing}
                _write_job(job, state)  # before any wait: a kill from here on finds the job
            try:
                responses = await self._wait_for_job(state)
            except LLMCallError:  # the job failed or expired: the next attempt submits anew
                _forget_job(job)
                raise
            # A job submitted before jobs kept their positions holds every request.
            for position, response in zip(state.get("positions", range(len(requests))), responses, strict=True):
                if response is not None:
                    self.llm.record(requests[position], position % count, response)
                    answers[position] = response
            _forget_job(job)  # its answers are in the record now
        rows: list[Row] = []
        for i, row in enumerate(inputs):
            mine = answers[i * count:(i + 1) * count]
            if any(a is None for a in mine):
                rows.append(self._failed(row, messages[i], LLMCallError(
                    f"{self.llm.endpoint}: the offline batch {(state or {}).get('batch_id')} has no answer for this row.",
                    endpoint=self.llm.endpoint, status=None, reason="batch_missing", attempts=1,
                )))
                continue
            try:
                output = self.llm.output_from(mine, requests[i * count])  # type: ignore[arg-type]
            except LLMCallError as exc:
                rows.append(self._failed(row, messages[i], exc))
                continue
            rows.extend(self._rows(row, messages[i], output))
        return rows

    def _job_file(self, submitted: list[dict[str, Any]]) -> Path | None:
        """Where the job of these requests is kept while it runs (in the step's lasting
        folder, named by what it asks), or None when the run keeps no cache."""
        folder = self.lasting_path or self.cache_path
        if folder is None:
            return None
        asked = {"endpoint": self.llm.base_url, "requests": submitted}
        digest = hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode()).hexdigest()
        return Path(folder) / "offline-jobs" / f"{digest[:32]}.json"

    async def _wait_for_job(self, state: dict[str, Any]) -> list[dict[str, Any] | None]:
        """The finished job's responses; suspends the step while it runs, unless
        `offline_batch_generation_block_until_done` says to poll in this run."""
        interval = self.llm.offline_batch_generation_block_until_done
        while True:
            responses = await self.llm.poll_batch(state)
            if responses is not None:
                return responses
            if interval is None:
                raise SuspendStep(state=state, retry_after=OFFLINE_POLL_SECONDS)
            await asyncio.sleep(interval)


def _read_job(path: Path | None, positions: list[int]) -> dict[str, Any] | None:
    """The job kept in `path` for requests at `positions`, if one is (a damaged file is
    no job: the requests are submitted again)."""
    if path is None:
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("The offline job file %s cannot be read (%s); submitting the job again.", path, exc)
        return None
    if not isinstance(state, dict) or state.get("positions") != positions or not state.get("batch_id"):
        return None
    logger.info("Resuming offline batch %s (%s), submitted by an earlier run", state["batch_id"], path)
    return state


def _write_job(path: Path | None, state: dict[str, Any]) -> None:
    """Keep a submitted job's state in `path`, atomically and durably."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with partial.open("w", encoding="utf-8") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _forget_job(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


class TextGeneration(Task):
    """Text generation from a Jinja2 prompt over the row's columns (distilabel's `TextGeneration`).

    Attributes:
        template: The Jinja2 prompt; every name in `columns` must appear in it.
        columns: The columns the template reads (a name or a list of names).
        system_prompt: A system message for every row; a row's own `system_prompt` column wins.
    """

    template: str = "{{ instruction }}"
    columns: str | list[str] = Field(default_factory=lambda: ["instruction"])
    system_prompt: str | None = None
    use_system_prompt: bool = True
    """distilabel's deprecated field, accepted so its scripts port; it does nothing there
    either (a row's own `system_prompt` column is always used)."""

    exclude_from_signature: ClassVar[set[str]] = Task.exclude_from_signature | {"use_system_prompt"}

    _template: Template | None = PrivateAttr(default=None)

    @field_validator("columns")
    @classmethod
    def _as_list(cls, value: str | list[str]) -> list[str]:
        return [value] if isinstance(value, str) else list(value)

    @model_validator(mode="after")
    def _columns_in_template(self) -> TextGeneration:
        for column in self.columns:
            pattern = r"(?:{%.*?\b" + re.escape(column) + r"\b.*?%}|{{\s*" + re.escape(column) + r"\s*}})"
            if not re.search(pattern, self.template):
                raise ValueError(
                    f"Column {column!r} of `columns` is not used in the template {self.template!r}. "
                    f"Use it in the template (`{{{{ {column} }}}}`) or remove it from `columns`."
                )
        return self

    @property
    def inputs(self) -> StepColumns:
        return {**dict.fromkeys(self.columns, True), "system_prompt": False}

    def format_input(self, input: Row) -> ChatType:
        if self.columns == ["instruction"] and not isinstance(input.get("instruction"), str):
            raise ValueError(
                f"Input `instruction` must be a string, got {input.get('instruction')!r}. "
                "For a conversation use `ChatGeneration` with a `messages` column."
            )
        if self._template is None:
            from jinja2 import Template

            self._template = Template(self.template)
        messages: ChatType = [
            {"role": "user", "content": self._template.render(**{c: input[c] for c in self.columns})}
        ]
        system = input.get("system_prompt") or self.system_prompt
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return messages


class ChatGeneration(Task):
    """The next assistant message of a conversation in the `messages` column (OpenAI chat format)."""

    @property
    def inputs(self) -> StepColumns:
        return ["messages"]

    def format_input(self, input: Row) -> ChatType:
        messages = input.get("messages")
        if not (isinstance(messages, list) and messages
                and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)):
            raise ValueError(
                f"Input `messages` must be a conversation in OpenAI chat format "
                f"([{{'role': 'user', 'content': '...'}}, ...]), got {messages!r}."
            )
        if messages[-1]["role"] != "user":
            raise ValueError(
                f"The last message of `messages` must be from the user, got role {messages[-1]['role']!r}."
            )
        return [{"role": m["role"], "content": m["content"]} for m in messages]


class _Batches:
    """What `Task.process` returns: an async iterator of row lists, as the engine runs an
    async step, that is also a plain iterator, for distilabel's `next(task.process(rows))`
    in a script or a notebook; iterated that way, each batch runs on the LLM's own loop
    (`OpenAILLM.run_sync`, whose client `unload` closes)."""

    def __init__(self, batches: AsyncIterator[list[Row]], run: Callable[[Awaitable[Any]], Any]) -> None:
        self._batches = batches
        self._run = run

    def __aiter__(self) -> _Batches:
        return self

    async def __anext__(self) -> list[Row]:
        return await self._batches.__anext__()

    def __iter__(self) -> _Batches:
        return self

    def __next__(self) -> list[Row]:
        try:
            return self._run(self._batches.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None
