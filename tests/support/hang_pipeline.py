"""A pipeline whose step hangs on one batch, runnable as a script.

`python -m tests.support.hang_pipeline CACHE_DIR EXECUTOR {sync|async}`: the stall warning
and Ctrl+C tests run it in a process of its own and send it real signals.
"""

from __future__ import annotations

import sys

from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.steps import AsyncHang, SyncHang


def main() -> None:
    cache_dir, executor, kind = sys.argv[1:4]
    hang = AsyncHang if kind == "async" else SyncHang
    with Pipeline(name="hang", cache_dir=cache_dir, executor=executor) as pipeline:
        LoadDataFromDicts(data=[{"x": i} for i in range(20)], batch_size=4) >> hang(name="stuck", hang_on=7, input_batch_size=2)
    pipeline.run(progress=False)


if __name__ == "__main__":
    main()
