"""Small helpers of the stillhouse-steps tests: a pipeline around one loader, and what
a run computed. Pipeline runs need stillhouse-cache and stillhouse-executors."""

from __future__ import annotations

from typing import Any

import pytest


def needs_full_install() -> None:
    """Skip (in a core + steps only install) a test that runs whole pipelines."""
    pytest.importorskip("stillhouse.cache", reason="runs a pipeline with a cache")
    pytest.importorskip("stillhouse.executors", reason="runs a pipeline")


def run_loader(make_loader: Any, cache_dir: Any, executor: str = "threaded",
               name: str = "loader-test") -> tuple[list[dict[str, Any]], set[str]]:
    """Run `make_loader()` alone in a pipeline; its rows and the steps that computed."""
    from stillhouse.core import Pipeline

    with Pipeline(name=name, cache_dir=str(cache_dir), executor=executor) as pipeline:
        make_loader()
    result = pipeline.run(progress=False)
    leaf = next(iter(result))
    rows = result[leaf]["train"].to_list()
    computed = {row["step"] for row in pipeline.last_run_summary if row["started_worker"]}
    return rows, computed
