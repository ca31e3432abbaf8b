"""The executor conformance suite (`stillhouse.core.testing.conformance`) on every
executor of the workspace; tests/core/test_conformance_inprocess.py runs it on core's
in-process executor with stillhouse-core alone."""

from __future__ import annotations

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
