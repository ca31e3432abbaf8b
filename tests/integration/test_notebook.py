"""A pipeline defined and run inside a real Jupyter kernel (steps live in the notebook)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]

CELLS = [
    """
from stillhouse.core import Pipeline, StepInput, step
from stillhouse.core.steps import LoadDataFromDicts

@step(inputs=["x"], outputs=["y"])
def Square(inputs: StepInput):
    for row in inputs:
        row["y"] = row["x"] ** 2
    yield inputs
""",
    """
with Pipeline(name="notebook", cache_dir={cache!r}, executor={executor!r}) as pipeline:
    LoadDataFromDicts(data=[{{"x": i}} for i in range(9)], batch_size=4) >> Square(input_batch_size=2)
distiset = pipeline.run(use_cache=False)
print("ROWS", [row["y"] for row in distiset["default"]["train"]])
""",
    "pipeline._repr_markdown_()[:20]",
    """
import asyncio

@step(inputs=["x"], outputs=["y"])
async def AsyncCube(inputs: StepInput):
    await asyncio.sleep(0.01)
    for row in inputs:
        row["y"] = row["x"] ** 3
    yield inputs

with Pipeline(name="notebook-async", cache_dir={cache!r}, executor={executor!r}) as pipeline:
    LoadDataFromDicts(data=[{{"x": i}} for i in range(5)], batch_size=2) >> AsyncCube(input_batch_size=1)
distiset = pipeline.run(use_cache=False)
print("CUBES", [row["y"] for row in distiset["default"]["train"]])
""",
]


@pytest.mark.parametrize("executor", ["mp", "threaded", "sync"])
def test_pipeline_runs_in_a_jupyter_kernel(tmp_path, executor):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(cell.format(cache=str(tmp_path), executor=executor).strip())
        for cell in CELLS
    ]
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(out.get("text", "") for out in notebook.cells[1].outputs if out.output_type == "stream")
    assert "ROWS [0, 1, 4, 9, 16, 25, 36, 49, 64]" in printed
    shown = notebook.cells[2].outputs[0]["data"]["text/plain"]
    assert "mermaid" in shown
    # an async step, run from the kernel's thread, which already runs an event loop
    printed = "".join(out.get("text", "") for out in notebook.cells[3].outputs if out.output_type == "stream")
    assert "CUBES [0, 1, 8, 27, 64]" in printed
