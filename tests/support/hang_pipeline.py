"""A pipeline whose step hangs on one batch, runnable as a script.

`python -m tests.support.hang_pipeline CACHE_DIR EXECUTOR {sync|async|load|blockloop}`: the stall
warning and Ctrl+C tests run it in a process of its own and send it real signals. With
"load" the step's `load()` never returns; with "blockloop" an async step blocks its loop.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator

from stillhouse.core import Pipeline, StepInput, step
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.steps import AsyncHang, SyncHang


class LoadHangs(SyncHang):  # type: ignore[misc, valid-type]
    def load(self) -> None:
        super().load()
        time.sleep(3600)


@step(inputs=["x"], outputs=["slow"])
async def BlocksItsLoop(inputs: StepInput, hang_on: int = -1) -> AsyncIterator[list[dict]]:
    """An async step that blocks its own event loop (a sync call in `async def`)."""
    if any(row["x"] == hang_on for row in inputs):
        time.sleep(3600)
    yield [{**row, "slow": row["x"]} for row in inputs]


def main() -> None:
    cache_dir, executor, kind = sys.argv[1:4]
    hang = {"async": AsyncHang, "load": LoadHangs, "blockloop": BlocksItsLoop}.get(kind, SyncHang)
    with Pipeline(name="hang", cache_dir=cache_dir, executor=executor) as pipeline:
        LoadDataFromDicts(data=[{"x": i} for i in range(20)], batch_size=4) >> hang(name="stuck", hang_on=7, input_batch_size=2)
    pipeline.run(progress=False)


if __name__ == "__main__":
    main()
