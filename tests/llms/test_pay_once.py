"""Pay once: after a SIGKILL the rerun does not resend a request whose answer was recorded.

The server counts requests across both runs: at most rows + the calls in flight at the kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stillhouse.llms.testing import FakeOpenAIServer
from tests.llms.conftest import API_KEY

# Pipelines need the executors, the cache and the results packages beside core and llms.
pytest.importorskip("stillhouse.executors")
pytest.importorskip("stillhouse.distiset")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
ROWS = 120
MAX_CONCURRENCY = 8  # tests/llms/llm_pipeline.py


def _start(cache: Path, executor: str, base_url: str, out: Path, **llm_fields: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STILLHOUSE_PROGRESS": "0", "OPENAI_API_KEY": API_KEY}
    args = [str(cache), executor, base_url, str(ROWS), str(out), json.dumps(llm_fields)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.llms.llm_pipeline", *args],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    """SIGKILL the run's process group once `ready()`; fails if the run ends first or
    `what` does not happen within 120 s."""
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, f"{what} never happened"
            time.sleep(0.01)
        _kill_group(process)
        process.communicate(timeout=30)
    finally:
        _kill_group(process)


def _finish(process: subprocess.Popen) -> None:
    """Wait for a run to end (180 s at most) and check that it succeeded."""
    try:
        _, err = process.communicate(timeout=180)
    finally:
        _kill_group(process)
    assert process.returncode == 0, err


def _kill_after_a_quarter(server: FakeOpenAIServer, cache: Path, executor: str, out: Path) -> int:
    """Start the pipeline, SIGKILL it once a quarter of the rows were answered; the
    requests answered by then."""
    process = _start(cache, executor, server.base_url, out)
    _kill_when(process, lambda: len(server.chat_requests(200)) >= ROWS // 4, "a quarter of the rows answered")
    before = len(server.chat_requests(200))
    assert before < ROWS, "the run finished before the kill: nothing was tested"
    return before


def _rerun_sends_only_the_rest(server: FakeOpenAIServer, cache: Path, executor: str, out: Path, before: int,
                               **llm_fields: object) -> None:
    _finish(_start(cache, executor, server.base_url, out, **llm_fields))
    rows = json.loads(out.read_text())
    assert sorted(r["instruction"] for r in rows) == sorted(f"question {i}" for i in range(ROWS))
    assert all(r["generation"] == f"echo: {r['instruction']}" for r in rows)
    sent = server.chat_requests(200)
    assert len(sent) <= ROWS + MAX_CONCURRENCY, f"{len(sent)} answered requests for {ROWS} rows"
    assert len(sent) - before < ROWS  # the rerun sent only what was not recorded
    assert API_KEY not in "".join(p.read_text("utf-8", "replace") for p in cache.rglob("*") if p.is_file())


@pytest.mark.parametrize("executor", ["threaded", "mp"])
def test_sigkill_then_rerun_sends_each_request_once(tmp_path, executor) -> None:
    with FakeOpenAIServer(latency=0.1, api_key=API_KEY) as server:
        cache, out = tmp_path / "cache", tmp_path / "out.json"
        before = _kill_after_a_quarter(server, cache, executor, out)
        _rerun_sends_only_the_rest(server, cache, executor, out, before)


def test_a_rerun_with_a_longer_timeout_and_other_limits_still_pays_once(tmp_path) -> None:
    # What a user changes after a killed or flaky run: how calls are made, not what is
    # asked. The step's cache and its call record must survive it.
    with FakeOpenAIServer(latency=0.1, api_key=API_KEY) as server:
        cache, out = tmp_path / "cache", tmp_path / "out.json"
        before = _kill_after_a_quarter(server, cache, "threaded", out)
        _rerun_sends_only_the_rest(server, cache, "threaded", out, before,
                                   timeout=300.0, max_retries=2, max_concurrency=4, requests_per_minute=6000)


@pytest.mark.parametrize("executor", ["threaded", "mp"])
def test_sigkill_while_offline_jobs_run_then_rerun_submits_no_job_twice(tmp_path, executor) -> None:
    """Blocking offline jobs (polled in the run, never suspended): the rerun finds the
    jobs the killed run submitted and waits for them instead of paying for them again."""
    offline = {"use_offline_batch_generation": True, "offline_batch_generation_block_until_done": 0.05}
    jobs = ROWS // 10  # llm_pipeline's input_batch_size
    with FakeOpenAIServer(api_key=API_KEY, batch_seconds=3600.0) as server:  # no job ends before the kill
        cache, out = tmp_path / "cache", tmp_path / "out.json"
        process = _start(cache, executor, server.base_url, out, **offline)
        _kill_when(process, lambda: len(list(cache.rglob("offline-jobs/*.json"))) >= jobs,
                   "every job submitted and kept")
        server.batch_seconds = 0.0  # the jobs are done when the rerun asks
        _finish(_start(cache, executor, server.base_url, out, **offline))
        rows = json.loads(out.read_text())
        assert sorted(r["generation"] for r in rows) == sorted(f"echo: question {i}" for i in range(ROWS))
        assert sum(len(job) for job in server.batch_inputs()) == ROWS  # before: 2 x ROWS
        assert list(cache.rglob("offline-jobs/*.json")) == []  # answered jobs are forgotten
