from __future__ import annotations

import pytest

EXECUTORS = ["sync", "threaded", "mp", "ray"]


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    return request.param
