"""The AIMD rule on a real core shared limit (process-local outside a run)."""

from __future__ import annotations

import random
import uuid

from stillhouse.core import shared_limit
from stillhouse.llms.limits import Aimd, endpoint_limit_name


def _limit(n: int):
    return shared_limit(f"test-aimd-{uuid.uuid4().hex}", max_concurrency=n)


def test_occasional_429s_do_not_back_off() -> None:
    limit = _limit(64)
    aimd = Aimd(limit, 64, cooldown=0.0)
    rng = random.Random(0)
    for _ in range(2000):
        aimd.on_rate_limited() if rng.random() < 0.05 else aimd.on_success()
    assert limit.max_concurrency == 64


def test_many_429s_halve_then_successes_recover() -> None:
    limit = _limit(64)
    aimd = Aimd(limit, 64, cooldown=0.0)
    for _ in range(30):
        aimd.on_success()
    for _ in range(11):
        aimd.on_rate_limited()
    assert limit.max_concurrency == 32
    for _ in range(32 + 33):
        aimd.on_success()
    assert limit.max_concurrency == 34  # one slot per window of `current` successes
    for _ in range(10_000):
        aimd.on_success()
    assert limit.max_concurrency == 64  # never above the ceiling


def test_one_limit_name_per_endpoint() -> None:
    assert endpoint_limit_name("http://h/v1/", "m") == endpoint_limit_name("http://h/v1", "m")
    assert endpoint_limit_name("http://h/v1", "m") != endpoint_limit_name("http://h/v1", "n")
