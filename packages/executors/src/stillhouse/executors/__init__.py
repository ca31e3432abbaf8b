"""stillhouse executors: "mp" (a process per replica), "threaded" and "sync".

They register through the `stillhouse` entry-point group (see `plugin.py`), the
same way a third-party executor does.
"""

from stillhouse.executors.mp import MultiprocessingExecutor
from stillhouse.executors.sync import SyncExecutor
from stillhouse.executors.threaded import ThreadedExecutor

__all__ = ["MultiprocessingExecutor", "SyncExecutor", "ThreadedExecutor"]
