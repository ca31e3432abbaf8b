"""The AIMD rule on a real core shared limit (process-local outside a run)."""

from __future__ import annotations

import random
import uuid

from stillhouse.core import shared_limit
from stillhouse.llms.limits import MAX_PATIENCE, Aimd, endpoint_limit_name


def _limit(n: int):
    return shared_limit(f"test-aimd-{uuid.uuid4().hex}", max_concurrency=n)


def _succeed(aimd: Aimd, times: int) -> None:
    for _ in range(times):
        aimd.on_success(aimd.ticket())


def test_occasional_429s_do_not_back_off() -> None:
    limit = _limit(64)
    aimd = Aimd(limit, 64)
    rng = random.Random(0)
    for _ in range(2000):
        ticket = aimd.ticket()
        if rng.random() < 0.05:
            assert aimd.on_rate_limited(ticket) is False  # retried, and counted
        else:
            aimd.on_success(ticket)
    assert limit.max_concurrency == 64


def test_many_429s_halve_once_per_level_then_successes_recover() -> None:
    limit = _limit(64)
    aimd = Aimd(limit, 64)
    _succeed(aimd, 30)
    burst = [aimd.ticket() for _ in range(40)]  # 40 requests sent at 64, all refused
    answered = [aimd.on_rate_limited(ticket) for ticket in burst]
    # More than 20% of 50 answers: the 11th halves; the rest were sent before it, so
    # that decrease answered them too (no second halving for the same burst).
    assert answered == [False] * 10 + [True] * 30
    assert limit.max_concurrency == 32 and aimd.current == 32
    assert all(aimd.lowered_since(ticket) for ticket in burst)  # the first ten's retries are not counted either
    _succeed(aimd, 32 + 33)
    assert limit.max_concurrency == 34  # one slot per window of `current` successes
    _succeed(aimd, 10_000)
    assert limit.max_concurrency == 64  # never above the ceiling


def test_a_small_concurrency_is_lowered_by_one_429_and_never_below_1() -> None:
    limit = _limit(4)
    aimd = Aimd(limit, 4)
    _succeed(aimd, 10)
    assert aimd.on_rate_limited(aimd.ticket()) is True  # 1 of the last 4 answers is over 20%
    assert limit.max_concurrency == 2
    assert aimd.on_rate_limited(aimd.ticket()) is True
    assert limit.max_concurrency == 1
    # At 1 nothing is left to lower: the 429 is not about our concurrency, and counts.
    ticket = aimd.ticket()
    assert aimd.on_rate_limited(ticket) is False and not aimd.lowered_since(ticket)
    assert limit.max_concurrency == 1


def test_holders_of_one_limit_follow_each_others_decreases() -> None:
    limit = _limit(16)
    first, second = Aimd(limit, 16), Aimd(limit, 16)  # two replicas or processes
    _succeed(first, 20)
    _succeed(second, 20)
    seconds_ticket = second.ticket()
    for _ in range(4):  # more than 20% of 16
        first.on_rate_limited(first.ticket())
    assert limit.max_concurrency == 8
    # The second holder's request went at 16 too: its 429 is what the first's decrease
    # answered, so it follows to 8 instead of halving again to 4.
    assert second.on_rate_limited(seconds_ticket) is True
    assert second.current == 8 and limit.max_concurrency == 8
    # A holder that only succeeds learns of the decrease when it would raise the limit.
    third = Aimd(limit, 16)
    third.current = 12
    _succeed(third, 12)
    assert third.current == 8 and limit.max_concurrency == 8


def test_a_level_refused_again_is_tried_ever_more_rarely() -> None:
    # A server that takes exactly 1 request at a time: at 2, one of two is refused.
    limit = _limit(2)
    aimd = Aimd(limit, 2)
    probes = []
    for _ in range(8):
        successes = 0
        while aimd.current == 1:
            aimd.on_success(aimd.ticket())
            successes += 1
        probes.append(successes)
        ok, refused = aimd.ticket(), aimd.ticket()
        aimd.on_success(ok)
        assert aimd.on_rate_limited(refused) is True
        assert aimd.current == 1
    assert MAX_PATIENCE == 16
    assert probes == [0, 1, 2, 4, 8, 16, 16, 16]  # doubling, up to MAX_PATIENCE windows
    # A level that holds for its whole window is not watched any more.
    while aimd.current == 1:
        aimd.on_success(aimd.ticket())
    _succeed(aimd, 2 * MAX_PATIENCE)
    assert aimd.current == 2 and aimd._refused_at is None


def test_one_limit_name_per_endpoint() -> None:
    assert endpoint_limit_name("http://h/v1/", "m") == endpoint_limit_name("http://h/v1", "m")
    assert endpoint_limit_name("http://h/v1", "m") != endpoint_limit_name("http://h/v1", "n")
    # Read in warnings: the endpoint and the model, never a credential the URL holds.
    named = endpoint_limit_name("https://user:sk-secret@api.example.com:8443/v1?key=sk-q", "gpt")
    assert named == "LLM endpoint https://api.example.com:8443/v1 (model 'gpt')"
