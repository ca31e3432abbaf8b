"""The executor conformance suite on core's in-process executor: runs with
stillhouse-core alone (`.ci/core-alone`), where no executor plugin is installed."""

from __future__ import annotations

import pytest

from stillhouse.core.engine import InProcessExecutor
from stillhouse.core.testing.conformance import ExecutorConformance

pytestmark = pytest.mark.timeout(120)


class TestInProcess(ExecutorConformance):
    executor_class = InProcessExecutor
