"""use_fs_to_pass_data and storage_parameters (SPEC.md §3): batches through a filesystem."""

from __future__ import annotations

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.errors import PipelineValidationError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import Count, Double

pytestmark = pytest.mark.timeout(120)


def build(tmp_path, executor: str) -> Pipeline:
    with Pipeline(name="fs", cache_dir=tmp_path / "cache", executor=executor) as pipeline:
        LoadDataFromDicts(data=[{"x": i} for i in range(12)], batch_size=5) >> Double(input_batch_size=4) >> Count()
    return pipeline


@pytest.mark.parametrize("executor", ["mp", "threaded"])
def test_batches_pass_through_a_local_filesystem_url(tmp_path, executor):
    storage = tmp_path / "batches"
    result = build(tmp_path, executor).run(
        use_cache=False, use_fs_to_pass_data=True, progress=False,
        storage_parameters={"path": f"file://{storage}"},
    )
    assert rows_of(result) == [{"n": 12, "xs": list(range(12))}]
    assert storage.exists()
    assert not [p for p in storage.rglob("*.pkl")]  # every batch file was cleaned up


def test_memory_filesystem_works_in_process(tmp_path):
    result = build(tmp_path, "threaded").run(
        use_cache=False, use_fs_to_pass_data=True, progress=False,
        storage_parameters={"path": "memory://stillhouse-test"},
    )
    assert rows_of(result)[0]["n"] == 12


def test_memory_filesystem_with_worker_processes_is_refused_before_the_run(tmp_path):
    with pytest.raises(PipelineValidationError, match="memory://"):
        build(tmp_path, "mp").run(
            use_cache=False, use_fs_to_pass_data=True, progress=False,
            storage_parameters={"path": "memory://stillhouse-test"},
        )
