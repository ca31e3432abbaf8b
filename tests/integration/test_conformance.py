"""The executor conformance suite (`stillhouse.core.testing.conformance`) on every
executor of the workspace; tests/core/test_conformance_inprocess.py runs it on core's
in-process executor with stillhouse-core alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stillhouse.core.testing.conformance import ExecutorConformance

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class TestSync(ExecutorConformance):
    executor_name = "sync"


class TestThreaded(ExecutorConformance):
    executor_name = "threaded"


class TestMp(ExecutorConformance):
    executor_name = "mp"
    replicas_in_own_processes = True


@pytest.mark.ray
class TestRay(ExecutorConformance):
    executor_name = "ray"

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def one_runtime(cls) -> Iterator[None]:
        """One local Ray runtime for the class, as a notebook shares one between runs:
        starting one per test cost seconds each (tests/ray/test_own_runtime.py covers
        the executor's own runtime)."""
        import ray

        from stillhouse.ray import start_local_runtime

        start_local_runtime()  # all CPUs, as the executor would start it
        try:
            yield
        finally:
            ray.shutdown()
