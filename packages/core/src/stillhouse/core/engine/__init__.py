"""The run engine and the interfaces executors, run stores and output writers implement."""

from stillhouse.core.engine.context import RunContext
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
from stillhouse.core.engine.worker import FatalStepError, StepRunner

__all__ = [
    "RunContext",
    "BatchKey", "BatchRecord", "BatchStorage", "Payload", "Died", "Event", "Executor", "Failed", "FatalStepError",
    "Finished", "Loaded", "MemoryOutputWriter", "NullRunStore", "NullStepStore",
    "OutputWriter", "RunStore", "StepRunner", "StepStore", "Task", "TaskResult",
]
