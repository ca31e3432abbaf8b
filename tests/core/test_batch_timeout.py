"""`batch_timeout` on a sync step in the driver's process: a batch that holds the GIL (a C
call) past its timeout cannot be ended by any thread, but once it returns it is failed,
as every overlong batch is, and never stored as a success."""

from __future__ import annotations

import ctypes

import pytest

from stillhouse.core import Pipeline, StepInput, step
from stillhouse.core.engine import InProcessExecutor
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.core.testing import registered_executor, rows_of

pytestmark = pytest.mark.timeout(60)


@step(inputs=["x"], outputs=["y"])
def HoldsTheGil(inputs: StepInput, seconds: int = 3):
    if any(row["x"] == 2 for row in inputs):
        ctypes.PyDLL(None).sleep(seconds)  # libc sleep(), called with the GIL held
    yield [{**row, "y": row["x"]} for row in inputs]


def test_a_batch_that_held_the_gil_past_its_timeout_is_failed_when_it_returns(tmp_path):
    with registered_executor(InProcessExecutor):
        with Pipeline(name="gil", executor="inprocess", cache_dir=tmp_path, enable_metadata=True) as pipeline:
            LoadDataFromDicts(data=[{"x": i} for i in range(6)], batch_size=6) >> HoldsTheGil(
                name="holds", input_batch_size=2, batch_timeout=1.0
            )
        rows = rows_of(pipeline.run(use_cache=False, progress=False))
    assert [r["y"] for r in rows] == [0, 1, None, None, 4, 5]
    assert "took longer than its batch_timeout (1.0 s) on batch (0, 1)" in rows[2]["stillhouse_metadata"]["error_holds"]
