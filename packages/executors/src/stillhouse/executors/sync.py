"""The "sync" executor: every step runs in the calling thread, one task at a time.

For debugging: `breakpoint()` inside `process()` stops in the driver's terminal,
and a traceback goes straight from the engine into the step. It is core's
`InProcessExecutor` under the name "sync".
"""

from __future__ import annotations

from typing import ClassVar

from stillhouse.core.engine import InProcessExecutor


class SyncExecutor(InProcessExecutor):
    """Runs each step in the calling thread: `events()` runs exactly one pending task
    (see `stillhouse.core.engine.InProcessExecutor`)."""

    name: ClassVar[str] = "sync"
