"""Steps: the units of work of a pipeline, as pydantic models.

`Step` processes batches, `GlobalStep` processes all rows at once and
`GeneratorStep` produces rows. This module also holds the `>>` wiring and the
mapping of column names; it knows nothing of how steps are scheduled or run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
)

from stillhouse.core import _context
from stillhouse.core.contract import checked_batch, checked_pair, require_iterator
from stillhouse.core.runtime import (
    _RUNTIME_PARAMETER_ANNOTATION,
    RuntimeParameter,
    RuntimeParametersMixin,
)
from stillhouse.core.secrets import redact_validation_error
from stillhouse.core.serializable import Serializable
from stillhouse.core.signatures import result_affecting
from stillhouse.core.typing import GeneratorStepOutput, Row, StepColumns, StepInput, StepOutput

if TYPE_CHECKING:
    from pathlib import Path

    from stillhouse.core.routing import RoutingBatchFunction

METADATA_COLUMN = "stillhouse_metadata"
"""The per-row metadata column (`enable_metadata`): a dict of per-step extras such as
`error_<step>` (a failed batch's error) or an LLM step's raw output; distilabel's
`distilabel_metadata`. Defined here only; everything else imports it."""

_NAME_PATTERN = r"^[a-zA-Z0-9_-]+$"
MAX_NAME_BYTES = 200
"""Longest pipeline or step name: names become cache path components (`steps/<name>-<sig>`),
kept well under the 255-byte file-name limit of common filesystems."""

# `Optional[RuntimeParameter[float]]` spelt without the `Field(default=None)` inside the
# union: pydantic warns about that for every subclass, and every step subclasses this.
_OptionalSeconds = Annotated[PositiveFloat | None, _RUNTIME_PARAMETER_ANNOTATION] | None

_resume_state: ContextVar[dict[str, Any] | None] = ContextVar("stillhouse_resume_state", default=None)
"""The state a step saved with `SuspendStep` for the batch being processed (set by the
worker around each call of `process`; a contextvar, so concurrent async batches each
see their own)."""

_batch_failures: ContextVar[list[str] | None] = ContextVar("stillhouse_batch_failures", default=None)
"""What `record_failure` was told during the batch being processed (a list the worker
sets around each call of `process`, read when the batch ends)."""


# `Optional[RuntimeParameter[...]]` is how distilabel (and so our users) spell an optional
# runtime parameter; pydantic >= 2.12 warns about the Field() inside the union, harmlessly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")

    class StepResources(RuntimeParametersMixin, BaseModel):
        """What each replica of a step needs.

        Attributes:
            replicas: How many copies of the step run side by side (normal steps only).
            cpus: CPUs per replica (used by the "ray" executor).
            gpus: GPUs per replica; "mp" sets `CUDA_VISIBLE_DEVICES` for each replica.
            memory: Memory per replica in bytes (used by the "ray" executor).
            resources: Custom resources per replica (used by the "ray" executor).
        """

        model_config = ConfigDict(extra="forbid", validate_assignment=True)

        replicas: RuntimeParameter[PositiveInt] = Field(default=1)
        cpus: RuntimeParameter[PositiveInt] | None = None
        gpus: RuntimeParameter[PositiveInt] | None = None
        memory: RuntimeParameter[PositiveInt] | None = None
        resources: RuntimeParameter[dict[str, int]] | None = None


def infer_step_name(class_name: str, taken: set[str]) -> str:
    """snake_case of the class name plus the first free `_<n>` suffix."""
    base = re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower()
    n = 0
    while f"{base}_{n}" in taken:
        n += 1
    return f"{base}_{n}"


class _Step(Serializable, RuntimeParametersMixin, BaseModel, ABC):
    """What every step has: a name, column mappings, resources and its pipeline.

    Attributes:
        batch_timeout: Seconds one batch may take (None: no limit); an overlong batch is a
            failed batch (a generator or global step's stops the run).
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True, validate_assignment=True, extra="forbid"
    )

    name: str | None = Field(default=None, pattern=_NAME_PATTERN, max_length=MAX_NAME_BYTES)
    resources: StepResources = Field(default_factory=StepResources)
    pipeline: Any = Field(default=None, exclude=True, repr=False)
    input_mappings: dict[str, str] = Field(default_factory=dict)
    output_mappings: dict[str, str] = Field(default_factory=dict)
    # Left out of dumps (and so of signatures and pipeline.yaml) while empty.
    overwrite_columns: list[str] = Field(default_factory=list, exclude_if=lambda value: not value)
    """Columns that `output_mappings` may write over on purpose (validation refuses
    a mapping onto an input or upstream column otherwise)."""
    use_cache: bool = True
    batch_timeout: _OptionalSeconds = None
    """Seconds one batch may take; an overlong batch is a failed batch (SPEC §5)."""

    _built_from_decorator: bool = PrivateAttr(default=False)
    _pipeline_artifacts_path: Path | None = PrivateAttr(default=None)

    requirements: ClassVar[list[str]] = []
    """pip requirements this step needs; checked before any worker starts (`@requirements`)."""

    exclude_from_signature: ClassVar[set[str]] = {
        "type_info", "runtime_parameters_info", "input_batch_size", "batch_size", "resources",
        "use_cache", "concurrency", "batch_timeout",
    }
    """`dump()` keys that do not change what the step computes, so not in `signature` nor in
    the cache's signature. A model held in a field (an LLM) may name its own the same way."""

    def __init__(self, **data: Any) -> None:
        self._validating(super().__init__, **data)
        # Joined after validation, not in model_post_init: pydantic would turn a
        # DuplicateStepNameError (a ValueError) raised there into a generic ValidationError.
        if self.pipeline is not None:
            self.pipeline._add_step(self)

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        if self.pipeline is None:
            self.pipeline = _context.current_pipeline.get()
        if not self.name:
            taken = set(self.pipeline.dag.step_names) if self.pipeline is not None else set()
            self.name = infer_step_name(type(self).__name__, taken)
        if self.pipeline is None:
            self._logger.warning(
                "Step %r was created outside a pipeline: it cannot be connected or run. Create "
                "it inside `with Pipeline(...) as pipeline:` or pass `pipeline=`.", self.name
            )

    @property
    def _logger(self) -> logging.Logger:
        """The step's logger, `stillhouse.step.<name>` (distilabel's `self._logger`)."""
        return logging.getLogger(f"stillhouse.step.{self.name}")

    def __setattr__(self, name: str, value: Any) -> None:
        self._validating(super().__setattr__, name, value)

    def _validating(self, call: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Run pydantic validation; an error about a secret does not show its value."""
        try:
            call(*args, **kwargs)
            return
        except ValidationError as exc:
            redacted = redact_validation_error(exc, type(self))
            if redacted is exc:
                raise
        raise redacted  # outside the except block: the original is not its __context__

    def __getstate__(self) -> dict[Any, Any]:
        # A step travels to workers alone; its pipeline (and every other step) stays home.
        state = super().__getstate__()
        state["__dict__"] = {**state["__dict__"], "pipeline": None}
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def _describe(self) -> str:
        return f"step {self.name!r}"

    # -- wiring ---------------------------------------------------------------------

    def connect(self, *steps: _Step, routing_batch_function: RoutingBatchFunction | None = None) -> None:
        """Connect this step to `steps` (the same as `self >> steps`)."""
        if self.pipeline is None:
            from stillhouse.core.errors import StepConnectionError

            raise StepConnectionError(
                f"Step {self.name!r} belongs to no pipeline, so it cannot be connected. "
                "Create it inside `with Pipeline(...) as pipeline:` or pass `pipeline=`."
            )
        for other in steps:
            if other.pipeline is not self.pipeline:
                from stillhouse.core.errors import StepConnectionError

                raise StepConnectionError(
                    f"Steps {self.name!r} and {other.name!r} belong to different pipelines. "
                    "Create both inside the same `with Pipeline(...)` block."
                )
            self.pipeline._add_edge(self.name, other.name)
        if routing_batch_function is not None:
            routing_batch_function = routing_batch_function._for_upstream(self)
            routing_batch_function._set_upstream(self)
            self.pipeline._set_routing(self.name, routing_batch_function)

    def __rshift__(self, other: Any) -> Any:
        from stillhouse.core.routing import RoutingBatchFunction

        if isinstance(other, _Step):
            self.connect(other)
            return other
        if isinstance(other, list) and all(isinstance(s, _Step) for s in other):
            self.connect(*other)
            return other
        if isinstance(other, RoutingBatchFunction):
            other = other._for_upstream(self)  # a routing used twice: one copy per use
            other._set_upstream(self)
            return other
        return NotImplemented

    def __rrshift__(self, other: list[_Step]) -> Self:
        if isinstance(other, list) and all(isinstance(s, _Step) for s in other):
            for step in other:
                step.connect(self)
            return self
        return NotImplemented

    # -- kind and columns -----------------------------------------------------------

    @property
    def is_generator(self) -> bool:
        return isinstance(self, GeneratorStep)

    @property
    def is_global(self) -> bool:
        return isinstance(self, GlobalStep)

    @property
    def is_normal(self) -> bool:
        return not self.is_generator and not self.is_global

    @property
    def is_async(self) -> bool:
        """True when `process` is an `async def` generator (runs on an event loop)."""
        return inspect.isasyncgenfunction(self.process)

    @property
    def resume_state(self) -> dict[str, Any] | None:
        """Inside `process`: the state this step saved for this batch with `SuspendStep`
        in an earlier run (or an earlier try of this run), else None."""
        return _resume_state.get()

    def record_failure(self, error: str) -> None:
        """Inside `process`: say that part of this batch failed, although `process` still
        returns its rows (a row whose remote call never succeeded, kept with None outputs).

        The batch is stored as failed: the run summary counts it, and
        `run(retry_failed=True)` sends it to the step again (a normal or global step; a
        generator's batches are not retried). Outside a batch it does nothing."""
        failures = _batch_failures.get()
        if failures is not None:
            failures.append(str(error))

    @property
    def inputs(self) -> StepColumns:
        """Columns the step reads: a list, or `{column: required}`."""
        return []

    @property
    def outputs(self) -> StepColumns:
        """Columns the step writes: a list, or `{column: required}`."""
        return []

    def get_inputs(self) -> dict[str, bool]:
        """`{column: required}` of the inputs, named as the data names them (after
        `input_mappings`): `{"instruction": "prompt"}` gives `{"prompt": True}`."""
        return {self.input_mappings.get(c, c): r for c, r in _columns(self.inputs).items()}

    def get_outputs(self) -> dict[str, bool]:
        """`{column: required}` of the outputs, after `output_mappings`."""
        return {self.output_mappings.get(c, c): r for c, r in _columns(self.outputs).items()}

    def verify_inputs_mappings(self) -> None:
        """Raise `InvalidMappingError` if an `input_mappings` key is not an input."""
        self._verify_mappings(self.input_mappings, self.inputs, "input_mappings", "inputs",
                              "Keys are the step's input names, values the dataset's columns.")

    def verify_outputs_mappings(self) -> None:
        """Raise `InvalidMappingError` if an `output_mappings` key is not an output."""
        self._verify_mappings(self.output_mappings, self.outputs, "output_mappings", "outputs",
                              "Keys are the step's output names, values the new names.")

    def _verify_mappings(self, mappings: dict[str, str], columns: StepColumns, field: str,
                         kind: str, hint: str) -> None:
        from stillhouse.core.errors import InvalidMappingError

        for key in mappings:
            if key not in columns:
                raise InvalidMappingError(
                    f"Step {self.name!r}: {field} key {key!r} is not one of its {kind} "
                    f"{list(columns)!r}. {hint}"
                )

    # -- serialization and identity ------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The step as a plain dict: its fields, `type_info` and `runtime_parameters_info`."""
        from stillhouse.core.serialization import step_to_dict

        return step_to_dict(self)

    @property
    def signature(self) -> str:
        """A hash of what the step computes: its class and result-affecting fields.

        Fields in `exclude_from_signature` (batch sizes, resources, ...), those a model in
        a field names in its own `exclude_from_signature` (an LLM's timeout), and secrets
        are left out. The cache's own signature adds the step's code and its predecessors."""
        dumped = result_affecting(self.dump(), self)
        encoded = json.dumps(dumped, sort_keys=True, default=repr).encode()
        return hashlib.sha1(encoded).hexdigest()

    # -- artifacts -------------------------------------------------------------------------

    def set_pipeline_artifacts_path(self, path: Path | str | None) -> None:
        """Where the run keeps artifacts (`<run>/artifacts`); the engine sets it."""
        self._pipeline_artifacts_path = Path(path) if path is not None else None

    @property
    def artifacts_directory(self) -> Path | None:
        """`<run artifacts folder>/<step name>`, or None outside a run."""
        if self._pipeline_artifacts_path is None:
            return None
        return self._pipeline_artifacts_path / str(self.name)

    def save_artifact(
        self,
        name: str,
        write_function: Callable[[Path], None],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Save an artifact: `write_function(folder)` writes its files into
        `artifacts_directory / name`, and `metadata` goes to `metadata.json` beside them.
        Outside a run (no artifacts folder) it logs a warning and saves nothing."""
        if self.artifacts_directory is None:
            self._logger.warning(
                "Step %r cannot save artifact %r: it runs outside a pipeline run, so there is "
                "no artifacts folder. Run it in a pipeline to keep artifacts.", self.name, name
            )
            return
        folder = self.artifacts_directory / name
        folder.mkdir(parents=True, exist_ok=True)
        self._logger.info("Storing artifact %r of step %r in %s", name, self.name, folder)
        write_function(folder)
        (folder / "metadata.json").write_text(json.dumps(metadata or {}), encoding="utf-8")

    # -- lifecycle --------------------------------------------------------------------

    _cache_path: Path | None = PrivateAttr(default=None)  # set by the engine for each run

    @property
    def cache_path(self) -> Path | None:
        """This step's durable folder: state it keeps across runs (a call record, job ids).

        A folder inside the step's store in the cache. What is written there survives a
        stop, a kill and the resume after it; the folder is emptied with the store (a
        changed signature, `use_cache=False`, `stillhouse cache remove`). None when the
        run keeps no cache (`dry_run`, stillhouse-cache not installed) and before a run.
        Set before `load()` in every replica."""
        return self._cache_path

    _lasting_path: Path | None = PrivateAttr(default=None)  # set by the engine for each run

    @property
    def lasting_path(self) -> Path | None:
        """This step's lasting folder: state that stays valid across its versions.

        Unlike `cache_path`, it is kept when the step's signature changes (a field, its
        code, a step before it): what is written there must be keyed by content (a call
        record keyed by exactly what was sent), so that any version of the step may use
        it. Emptied by `run(use_cache=False)`, the step's own `use_cache=False` and
        `stillhouse cache remove`. None when the run keeps no cache or its store offers
        no such folder. Set before `load()` in every replica."""
        return self._lasting_path

    def load(self) -> None:
        """Called once in each replica's worker before the first batch."""

    def unload(self) -> None:
        """Called once in each replica's worker after the last batch."""

    def signature_extra(self) -> dict[str, Any]:
        """What the step's results depend on beyond its field values, for its cache signature.

        Called in the driver before any worker starts, on every cached run. Return a
        JSON-serialisable dict; an entry named after a field stands in for that field's
        value. Override it (calling `super()`) for inputs outside the step: a loader
        returns the dataset's commit sha or its files' sizes and mtimes, so changed data
        is not answered from an old cache. The default returns the hash of each inline-data
        field (`stillhouse.core.inline_data`) instead of its rows.
        """
        from stillhouse.core.inline_data import signature_values

        return signature_values(self)

    def impute_step_outputs(self, step_output: list[Row]) -> list[Row]:
        """Rows of a failed batch: the input rows with every output column set to None
        (`step_output`: distilabel's name for those rows)."""
        outputs = list(self.get_outputs())
        return [{**row, **dict.fromkeys(outputs)} for row in step_output]

    def _map_output(self, row: Row, overridden: Row) -> Row:
        inverse_inputs = self.input_mappings
        result = {}
        for key, value in row.items():
            result[self.output_mappings.get(key) or inverse_inputs.get(key) or key] = value
        for key, value in overridden.items():
            result.setdefault(key, value)
        return result


def _columns(columns: StepColumns) -> dict[str, bool]:
    return dict(columns) if isinstance(columns, dict) else dict.fromkeys(columns, True)


BaseStep = _Step
"""The base of every step kind (`Step`, `GlobalStep`, `GeneratorStep`): the public name
executors and other packages use for "any step"."""


class Step(_Step, ABC):
    """A step that receives batches of `input_batch_size` rows from its predecessors.

    Attributes:
        input_batch_size: How many rows each call of `process` receives.
        concurrency: Batches one replica of an async step works on at once.
    """

    input_batch_size: RuntimeParameter[PositiveInt] = Field(default=50)
    concurrency: PositiveInt = 16

    @abstractmethod
    def process(self, *inputs: StepInput) -> StepOutput:
        """Yield lists of output rows; one `StepInput` per predecessor."""

    @property
    def process_parameters(self) -> list[inspect.Parameter]:
        return list(inspect.signature(self.process).parameters.values())

    def process_applying_mappings(self, *inputs: list[Row]) -> StepOutput:
        """Run `process` with `input_mappings` applied on the way in and
        `output_mappings` on the way out; columns hidden by a mapping are restored."""
        args, map_out = self._mapped_call(inputs)
        for rows in require_iterator(self.name, self.process(*args)):
            yield map_out(checked_batch(self.name, rows))

    async def aprocess_applying_mappings(self, *inputs: list[Row]) -> AsyncIterator[list[Row]]:
        """`process_applying_mappings` for an async step (`async def process`)."""
        args, map_out = self._mapped_call(inputs)
        async for rows in require_iterator(self.name, self.process(*args)):  # type: ignore[attr-defined]
            yield map_out(checked_batch(self.name, rows))

    def _mapped_call(
        self, inputs: tuple[list[Row], ...]
    ) -> tuple[list[list[Row]], Callable[[list[Row]], list[Row]]]:
        """The inputs to call `process` with, and what to apply to each batch it yields."""
        if not self.input_mappings:
            if not self.output_mappings:
                return list(inputs), lambda rows: rows
            return list(inputs), lambda rows: [self._map_output(row, {}) for row in rows]
        renamed, overridden = self._apply_input_mappings(inputs)
        n = len(overridden) or 1

        def map_out(rows: list[Row]) -> list[Row]:
            return [self._map_output(row, overridden[i % n] if overridden else {}) for i, row in enumerate(rows)]

        return renamed, map_out

    def _apply_input_mappings(self, inputs: tuple[list[Row], ...]) -> tuple[list[list[Row]], list[Row]]:
        to_step = {data_col: step_col for step_col, data_col in self.input_mappings.items()}
        renamed_inputs: list[list[Row]] = []
        overridden_rows: list[Row] = []
        for position, rows in enumerate(inputs):
            renamed_rows = []
            for row in rows:
                renamed: Row = {}
                overridden: Row = {}
                for key, value in row.items():
                    target = to_step.get(key, key)
                    if target != key and target in row and len(inputs) == 1:
                        overridden[target] = row[target]
                    if target == key and key in renamed:
                        continue  # already filled from a mapped column
                    renamed[target] = value
                renamed_rows.append(renamed)
                if position == 0:
                    overridden_rows.append(overridden)
            renamed_inputs.append(renamed_rows)
        return renamed_inputs, overridden_rows


class GlobalStep(Step, ABC):
    """A step that receives every row of its predecessors in one call."""


class GeneratorStep(_Step, ABC):
    """A step that produces rows; it has no predecessors.

    Every row it yields must set each required column of its outputs, as for any step
    (`StepContractError` otherwise), unless `outputs_follow_data` says its outputs are
    only read off the data it yields.

    Attributes:
        batch_size: How many rows each yielded batch holds.
    """

    batch_size: RuntimeParameter[PositiveInt] = Field(default=50)

    outputs_follow_data: ClassVar[bool] = False
    """True for a step whose outputs are the keys of the data it was given (the first
    row's, as `LoadDataFromDicts`'s): rows that lack one yield `None` there in the
    results, as in distilabel, rather than break the contract."""

    @abstractmethod
    def process(self, offset: int = 0) -> GeneratorStepOutput:
        """Yield `(rows, is_last_batch)`, skipping the first `offset` rows."""

    def process_applying_mappings(self, offset: int = 0) -> GeneratorStepOutput:
        for item in require_iterator(self.name, self.process(offset=offset), generator=True):
            rows, last = checked_pair(self.name, item)
            yield self._map_generated(rows), last

    async def aprocess_applying_mappings(self, offset: int = 0) -> AsyncIterator[tuple[list[Row], bool]]:
        """`process_applying_mappings` for an async generator step."""
        generated = require_iterator(self.name, self.process(offset=offset), generator=True)
        async for item in generated:  # type: ignore[attr-defined]
            rows, last = checked_pair(self.name, item)
            yield self._map_generated(rows), last

    def _map_generated(self, rows: list[Row]) -> list[Row]:
        return [self._map_output(row, {}) for row in rows] if self.output_mappings else rows


def requirements(specs: list[str]) -> Callable[[type[_Step]], type[_Step]]:
    """Declare the pip requirements of a step class: `@requirements(["nltk>=3"])`."""

    def decorate(cls: type[_Step]) -> type[_Step]:
        cls.requirements = list(specs)
        return cls

    return decorate
