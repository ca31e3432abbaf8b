"""docs/executors/ray.md: its Python blocks run, in order, in one namespace, as a user's
script would (the first run starts and stops its own Ray runtime)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "executors" / "ray.md"

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def test_python_blocks_run(tmp_path, monkeypatch):
    import ray

    assert not ray.is_initialized(), "a Ray runtime leaked from an earlier test module"
    monkeypatch.setenv("STILLHOUSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 5
    namespace: dict[str, object] = {"__name__": "docs_ray"}
    try:
        for index, block in enumerate(blocks):
            exec(compile(block, str(DOC), "exec"), namespace)
            if index == 0:  # a lone run starts its own runtime and stops it again
                assert not ray.is_initialized()
    finally:
        ray.shutdown()
    assert not ray.is_initialized()
    assert callable(namespace["run_on_cluster"])
    assert namespace["on_cluster"].executor_options["ray_head_node_url"] == "ray://head-node:10001"


def test_the_benchmark_figures_name_their_command():
    text = DOC.read_text()
    assert "python -m tests.ray.benchmark_ray_vs_mp" in text
    assert (Path(__file__).parent / "benchmark_ray_vs_mp.py").exists()
