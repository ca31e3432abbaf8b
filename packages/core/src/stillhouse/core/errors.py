"""Every exception stillhouse raises on purpose, one class per phase.

Each class derives from a builtin as well, so callers that catch `ValueError` or
`RuntimeError` keep working. Messages say what happened, show the bad value, list
what was expected and say how to fix it.
"""

from __future__ import annotations

from typing import Any


class StillhouseError(Exception):
    """Base class of every stillhouse error."""


# -- validation (raised before any worker starts) ---------------------------------


class PipelineValidationError(StillhouseError, ValueError):
    """The pipeline as defined cannot run; nothing has started."""


class DuplicateStepNameError(PipelineValidationError):
    """Two steps of one pipeline share a name."""


class CycleError(PipelineValidationError):
    """The connections form a cycle."""


class StepConnectionError(PipelineValidationError):
    """A step is connected in a way its type does not allow."""


class MissingInputsError(PipelineValidationError):
    """A step needs a column that no step upstream produces."""


class InvalidMappingError(PipelineValidationError):
    """An `input_mappings`/`output_mappings` key is not an input/output of the step."""


class RuntimeParameterError(PipelineValidationError):
    """A runtime parameter is missing or has a bad value."""


class InvalidResourcesError(PipelineValidationError):
    """`StepResources` asks for something the step type or machine cannot give."""


class MissingRequirementsError(PipelineValidationError, ModuleNotFoundError):
    """A requirement declared by the pipeline or a step is not installed (distilabel
    raises `ModuleNotFoundError`: a ported `except ModuleNotFoundError` still catches it)."""


class RoutingError(PipelineValidationError):
    """A routing batch function is used in a way the engine cannot honour."""


class UnknownExecutorError(PipelineValidationError):
    """No installed plugin provides the requested executor."""


class DatasetArgumentError(PipelineValidationError):
    """`run(dataset=...)` was given where it cannot be used, or is not a dataset."""


# -- serialization and plugins ----------------------------------------------------


class SerializationError(StillhouseError, ValueError):
    """A pipeline file cannot be read or names something that cannot be resolved."""


class PluginError(StillhouseError, RuntimeError):
    """A plugin failed to load, or registered something invalid."""


class MissingPluginError(PluginError):
    """A piece of stillhouse that lives in another distribution is not installed."""


# -- running ----------------------------------------------------------------------


class StepRuntimeError(StillhouseError, RuntimeError):
    """A step failed in a way that stops the run (load, global or generator step)."""

    def __init__(self, message: str, *, step_name: str | None = None) -> None:
        super().__init__(message)
        self.step_name = step_name


class WorkerDiedError(StepRuntimeError):
    """A worker process or actor ended without saying why (killed, segfault, OOM)."""


class MisalignedInputsError(StepRuntimeError):
    """A step's predecessors produced different numbers of rows."""


class StepContractError(StepRuntimeError):
    """A step's `process` broke the step contract: it must yield lists of row dicts (a
    generator step: `(rows, is_last)` pairs) and set every required output column."""


class BatchTimeoutError(StepRuntimeError, TimeoutError):
    """A batch took longer than its step's `batch_timeout`."""

    def __new__(cls, *args: Any, **kwargs: Any) -> BatchTimeoutError:
        # Its memory is laid out as TimeoutError's (an OSError): `RuntimeError.__new__`,
        # which tblib's unpickling finds first, refuses to make it, and under "mp" the
        # error crossed to the driver as a plain RuntimeError.
        return TimeoutError.__new__(cls, *args)


class StepsSuspendedError(StepRuntimeError):
    """The run ended with steps that suspended (`SuspendStep`): run again to resume them.

    `steps` maps each suspended step to the number of its batches that wait."""

    def __init__(self, message: str, *, steps: dict[str, int]) -> None:
        super().__init__(message, step_name=next(iter(steps), None))
        self.steps = dict(steps)


class LeafSchemaError(StillhouseError, TypeError):
    """A leaf step produced values that cannot share one column type."""


class EngineError(StillhouseError, RuntimeError):
    """The engine reached a state it should never reach (a bug: please report it)."""


class LimitError(StillhouseError, RuntimeError):
    """A shared limit cannot be reached (the run that served it ended or died)."""


class InvalidLimitError(StillhouseError, ValueError):
    """`shared_limit()` or a slot got a value it cannot use."""


# -- cache --------------------------------------------------------------------------


class CacheError(StillhouseError, RuntimeError):
    """The cache cannot be used as it is."""


class CacheLockedError(CacheError):
    """Another run of the same pipeline holds the cache."""


class CorruptCacheError(CacheError):
    """A cache file is damaged or was written by something else."""


class CacheDiskError(CacheError, OSError):
    """The disk refused a cache or result file (read-only, full, a file where a folder goes).

    Also an `OSError`, so code that catches disk errors keeps catching it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> CacheDiskError:
        return OSError.__new__(cls, *args)  # as `BatchTimeoutError.__new__`: it crosses processes

    @classmethod
    def about(cls, path: object, exc: OSError, doing: str = "write the cache file") -> CacheDiskError:
        """The error for `exc`, naming the file and the fix."""
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "the disk is full. Free some space"
        elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            why = "the disk or folder is read-only or not yours. Make it writable"
        else:
            why = "check that every folder on the path is a folder you can write to"
        return cls(
            f"Cannot {doing} {str(exc.filename or path)!r} ({exc.strerror or exc}): {why}, "
            "or pass another cache_dir= (or set STILLHOUSE_CACHE_DIR)."
        )


class UnstorableValueError(StepRuntimeError):
    """A step produced a row value that cannot be stored (a string with a lone surrogate)."""


# -- results ------------------------------------------------------------------------


class HubConnectionError(StillhouseError, ConnectionError):
    """The Hugging Face Hub (or the endpoint configured for it) could not be reached."""


# -- control flow a step may raise -------------------------------------------------


class StopRun(StepRuntimeError):
    """Raise inside a normal step's `process` when no batch of the step can succeed (the
    endpoint refused the API key): the run stops and `run()` raises an error naming the
    step, instead of this batch's rows going on with None outputs (SPEC §5) and every
    later batch failing the same way. Finished work stays cached; the batch is not stored.
    """


class SuspendStep(Exception):
    """Raise inside `process` to say "this batch is not finished, come back later".

    `state` (JSON-serialisable) is checkpointed and handed back as `self.resume_state`
    when the same batch is sent again: in the next run, or after `retry_after` seconds
    in this run with `Pipeline.run(wait_for_suspended=True)`.
    """

    def __init__(self, state: dict | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"step suspended (retry_after={retry_after!r})")
        self.state = state
        self.retry_after = retry_after

    def __reduce__(self) -> tuple:
        return (type(self), (self.state, self.retry_after))
