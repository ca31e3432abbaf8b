"""docs/steps.md: its Python blocks run, in order, in one namespace (the Hub example
reads from the local Hub of conftest.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.steps.conftest import parquet_bytes
from tests.steps.helpers import needs_full_install

DOC = Path(__file__).resolve().parents[2] / "docs" / "steps.md"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_python_blocks_run(hub, tmp_path, monkeypatch) -> None:
    needs_full_install()
    pytest.importorskip("stillhouse.distiset", reason="the examples return Distisets")
    monkeypatch.setenv("STILLHOUSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STILLHOUSE_PROGRESS", "0")
    monkeypatch.chdir(tmp_path)
    hub.publish("my-org/instructions", {
        "data/train-00000-of-00001.parquet": parquet_bytes(
            [{"instruction": f"Say {i}", "id": i} for i in range(5)]
        ),
    })
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 7
    namespace: dict[str, object] = {"__name__": "docs_steps"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
