"""A server that takes few requests at once (429 + a tiny `Retry-After` beyond them):
every row is answered, on "threaded" and "mp", without a storm of requests; only a 429
that goes on at the lowest concurrency uses up a call's retries. Real HTTP to
FakeOpenAIServer; no assertion on how long anything takes, only on what was sent."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.llms import LLMCallError, OpenAILLM, TextGeneration
from stillhouse.llms.testing import FakeOpenAIServer
from tests.support.results import rows_of

pytest.importorskip("stillhouse.executors")
pytest.importorskip("stillhouse.distiset")

CEILING = 64
"""`OpenAILLM.max_concurrency`'s default, where AIMD starts."""


def _model() -> str:
    # Outside a run an endpoint's limit lives as long as the process: one name per test.
    return f"fake-model-{uuid.uuid4().hex[:8]}"


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("executor", ["threaded", "mp"])
@pytest.mark.parametrize(("cap", "rows"), [(1, 60), (2, 100)])
def test_every_row_is_answered_by_a_server_that_takes_few_at_once(tmp_path, executor, cap, rows) -> None:
    # All rows arrive at once at 64 in flight; the server takes `cap` and answers the rest
    # 429 with Retry-After 0.05 s, as the audit's reproducer did (24 of 30 rows lost).
    with FakeOpenAIServer(latency=0.01, max_concurrency=cap, retry_after=0.05) as server:
        with Pipeline(name="capped", executor=executor, cache_dir=tmp_path, enable_metadata=True) as pipeline:
            LoadDataFromDicts(data=[{"instruction": f"q{i}"} for i in range(rows)]) >> TextGeneration(
                name="gen", llm=OpenAILLM(model=_model(), base_url=server.base_url, api_key="k"))
        result = rows_of(pipeline.run(progress=False))
        sent, refused = len(server.chat_requests()), len(server.chat_requests(429))
    failed = [r["stillhouse_metadata"].get("error_gen") for r in result if r["generation"] is None]
    assert failed == []
    assert [r["generation"] for r in result] == [f"echo: q{i}" for i in range(rows)]
    assert server.max_in_flight <= cap
    # No retry storm: halving from 64 to the server's cap wastes at most what was in flight
    # at each level (64 + 32 + ... < 2 x 64), and trying a refused level again costs one
    # 429 per ever longer run of successes; before, every row spent 7 attempts in a second.
    assert refused <= 2 * CEILING + rows // 4, (sent, refused)
    assert sent == rows + refused


@pytest.mark.timeout(120)
def test_a_429_that_goes_on_at_the_lowest_concurrency_uses_up_the_retries() -> None:
    # Every answer is 429 (a spent quota, not our concurrency); the limit is at 1 already,
    # so each retry counts, and waits the backoff though Retry-After says 0.01 s.
    with FakeOpenAIServer(retry_after=0.01) as server:
        llm = OpenAILLM(model=_model(), base_url=server.base_url, api_key="k", max_concurrency=1, max_retries=2)
        with pytest.raises(LLMCallError, match="still failing after 3 attempts") as info:
            llm.generate([[{"role": "user", "content": "x [[status=429]]"}]])
        llm.unload()
        started = [r["started"] for r in server.chat_requests(429)]
    assert info.value.attempts == 3 and len(started) == 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(started)]
    assert gaps[0] >= 0.25 and gaps[1] >= 0.5  # at least half of 0.5 s, then of 1 s


@pytest.mark.timeout(120)
def test_rows_refused_for_good_fail_after_a_bounded_number_of_requests() -> None:
    # Every row gets 429 forever: the limit comes down 8 -> 4 -> 2 -> 1 (those retries are
    # not counted), then each row spends its own retries. Rows are lost, but only so.
    rows, ceiling, max_retries = 12, 8, 1
    with FakeOpenAIServer(retry_after=0.01) as server:
        llm = OpenAILLM(model=_model(), base_url=server.base_url, api_key="k",
                        max_concurrency=ceiling, max_retries=max_retries)

        async def ask_all() -> list[BaseException | dict]:
            try:
                return await asyncio.gather(
                    *(llm.agenerate([{"role": "user", "content": f"q{i} [[status=429]]"}]) for i in range(rows)),
                    return_exceptions=True,
                )
            finally:
                await llm.aclose()

        outcomes = asyncio.run(ask_all())
        llm.unload()
        sent = len(server.chat_requests())
    assert all(isinstance(o, LLMCallError) for o in outcomes)
    assert llm._aimd.current == 1
    # Each row: its counted attempts, plus at most one uncounted per halving (8 -> 1: 3).
    assert sent <= rows * (max_retries + 1 + 3)
