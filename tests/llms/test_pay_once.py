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


def _start(cache: Path, executor: str, base_url: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STILLHOUSE_PROGRESS": "0", "OPENAI_API_KEY": API_KEY}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.llms.llm_pipeline", str(cache), executor, base_url, str(ROWS), str(out)],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.parametrize("executor", ["threaded", "mp"])
def test_sigkill_then_rerun_sends_each_request_once(tmp_path, executor) -> None:
    with FakeOpenAIServer(latency=0.1, api_key=API_KEY) as server:
        cache, out = tmp_path / "cache", tmp_path / "out.json"
        process = _start(cache, executor, server.base_url, out)
        try:
            deadline = time.monotonic() + 120
            while len(server.chat_requests(200)) < ROWS // 4:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the run never got going"
                time.sleep(0.01)
            _kill_group(process)
            process.communicate(timeout=30)
        finally:
            _kill_group(process)
        before = len(server.chat_requests(200))
        assert before < ROWS, "the run finished before the kill: nothing was tested"

        rerun = _start(cache, executor, server.base_url, out)
        try:
            _, err = rerun.communicate(timeout=180)
        finally:
            _kill_group(rerun)
        assert rerun.returncode == 0, err
        rows = json.loads(out.read_text())
        assert sorted(r["instruction"] for r in rows) == sorted(f"question {i}" for i in range(ROWS))
        assert all(r["generation"] == f"echo: {r['instruction']}" for r in rows)
        sent = server.chat_requests(200)
        assert len(sent) <= ROWS + MAX_CONCURRENCY, f"{len(sent)} answered requests for {ROWS} rows"
        assert len(sent) - before < ROWS  # the rerun sent only what was not recorded
        assert API_KEY not in "".join(p.read_text("utf-8", "replace") for p in cache.rglob("*") if p.is_file())
