"""docs/results.md: its Python blocks run, in order, in one namespace (the push goes
to the fake Hub)."""

from __future__ import annotations

import re
from pathlib import Path

import fsspec
import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "results.md"


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings(
    # huggingface_hub's plain LFS upload (the fake Hub has no Xet) posts bytes with `data=`.
    "ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"
)
def test_python_blocks_run(fake_hub, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STILLHOUSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 5
    namespace: dict[str, object] = {"__name__": "docs_results"}
    try:
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)
    finally:
        fsspec.filesystem("memory").rm("/results-demo", recursive=True)
    repo = fake_hub.repos["my-user/results-demo"]
    assert {"README.md", "pipeline.yaml", "pipeline.log"} <= set(repo.files)
    assert "measure/train-00000-of-00001.parquet" in repo.files
