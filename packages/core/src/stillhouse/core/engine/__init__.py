"""The run engine and the interfaces executors, run stores and output writers implement.

An executor author needs only this package: the protocol (`Executor`, `Task`, the
events), `StepRunner` (what a worker does with a task), the kit (`serve`, `STOP`,
`failed_event`, `portable`, log routing; see `kit.py`) and `InProcessExecutor`.
"""

from stillhouse.core.engine.context import RunContext
from stillhouse.core.engine.inprocess import InProcessExecutor
from stillhouse.core.engine.kit import (
    REPLACED,
    STOP,
    LogBuffer,
    failed_event,
    log_levels,
    outcome_event,
    portable,
    queue_task,
    replace_in_process,
    route_logs,
    serve,
)
from stillhouse.core.engine.logs import reemit
from stillhouse.core.engine.protocol import (
    BatchKey,
    BatchRecord,
    BatchStorage,
    Died,
    Event,
    Executor,
    Failed,
    Finished,
    Loaded,
    MemoryOutputWriter,
    NullRunStore,
    NullStepStore,
    OutputWriter,
    Payload,
    RunStore,
    StepStore,
    Task,
    TaskResult,
)
from stillhouse.core.engine.worker import FatalStepError, Outcome, StepRunner

__all__ = [
    "RunContext",
    "BatchKey", "BatchRecord", "BatchStorage", "Payload", "Died", "Event", "Executor", "Failed", "FatalStepError",
    "Finished", "Loaded", "MemoryOutputWriter", "NullRunStore", "NullStepStore",
    "OutputWriter", "RunStore", "StepRunner", "StepStore", "Task", "TaskResult", "Outcome",
    "InProcessExecutor",
    "REPLACED", "STOP", "LogBuffer", "failed_event", "log_levels", "outcome_event", "portable",
    "queue_task", "reemit", "replace_in_process", "route_logs", "serve",
]
