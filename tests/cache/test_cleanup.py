"""A run leaves no batch data behind: not empty `batch_data/` folders, not the inputs of a
global step that failed (issue 19 item 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillhouse.core import GlobalStep, Pipeline, StepInput
from stillhouse.core.steps import LoadDataFromDicts

pytestmark = pytest.mark.timeout(120)


class Total(GlobalStep):
    fail: bool = False

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["total"]

    def process(self, inputs: StepInput):
        if self.fail:
            raise RuntimeError("global step exploded")
        total = sum(row["x"] for row in inputs)
        yield [{**row, "total": total} for row in inputs]


def _run(tmp_path: Path, fail: bool, executor: str) -> Pipeline:
    with Pipeline(name=f"cleanup-{fail}", cache_dir=tmp_path, executor=executor) as pipeline:
        LoadDataFromDicts(data=[{"x": i} for i in range(6)], batch_size=2) >> Total(name="total", fail=fail)
    return pipeline


@pytest.mark.parametrize("executor", ["sync", "mp"])
def test_global_step_inputs_and_their_folder_are_removed(tmp_path, executor):
    pipeline = _run(tmp_path, fail=False, executor=executor)
    pipeline.run(progress=False)
    assert not (Path(pipeline.run_dir) / "batch_data").exists()


@pytest.mark.parametrize("executor", ["sync", "mp"])
def test_a_failed_global_steps_payload_is_removed(tmp_path, executor):
    pipeline = _run(tmp_path, fail=True, executor=executor)
    with pytest.raises(Exception, match="global step exploded"):
        pipeline.run(progress=False)
    run_dir = Path(pipeline.run_dir)
    assert not (run_dir / "batch_data").exists(), sorted(p.name for p in run_dir.rglob("*"))
