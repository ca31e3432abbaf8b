"""`StopRun` from a normal step's `process`: the run stops naming the step, instead of the
batch going on with None outputs; finished batches stay cached and the rerun resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.errors import StepRuntimeError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import StopsRunWhileMarked, batches_logged

pytestmark = pytest.mark.timeout(240)


def build(tmp_path: Path, executor: str) -> Pipeline:
    with Pipeline(name=f"stop-{executor}", cache_dir=tmp_path / "cache", executor=executor) as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(10)], batch_size=2)
        load >> StopsRunWhileMarked(name="double", input_batch_size=2,
                                    marker=str(tmp_path / "key-refused"), log=str(tmp_path / "double.log"))
    return pipeline


def computed_batches(tmp_path: Path) -> list[str]:
    return batches_logged(tmp_path / "double.log")


@pytest.mark.parametrize("executor", ["sync", "threaded", "mp"])
def test_stop_run_stops_the_run_and_the_rerun_resumes(tmp_path, executor):
    (tmp_path / "key-refused").touch()
    with pytest.raises(StepRuntimeError, match="'double'") as info:
        build(tmp_path, executor).run(progress=False)
    assert "StopRun: the endpoint refused the key" in str(info.value)
    assert "[6, 7]" in computed_batches(tmp_path)

    (tmp_path / "key-refused").unlink()
    rows = rows_of(build(tmp_path, executor).run(progress=False))
    assert rows == [{"x": i, "y": 2 * i} for i in range(10)]
    after = computed_batches(tmp_path)
    assert "[6, 7]" in after  # the stopping batch was not stored
    assert "[0, 1]" not in after  # batches finished before the stop were
