"""Kill real runs at random moments; the resumed result must equal an uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.crash_pipeline import ROWS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("STILLHOUSE_CRASH_ROUNDS", "1"))


def start(cache: Path, executor: str, out: Path, variant: str = "sync") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STILLHOUSE_PROGRESS": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.crash_pipeline", str(cache), executor, str(out), variant],
        cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 90) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    finally:
        kill_group(process)
    return process.returncode, err


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def group_is_gone(pgid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def wait_until_running(cache: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until this run has checkpointed a new batch (imports alone take seconds)."""
    def stored() -> int:
        return sum(log.stat().st_size for log in cache.glob("crash/steps/*/batches.log"))

    before = stored()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if stored() > before:
            return
        time.sleep(0.02)


def check(rows: dict, reference: dict) -> None:
    final, total = rows["final"], rows["total"]
    assert [r["x"] for r in final] == list(range(ROWS)), "rows lost, duplicated or reordered"
    assert total == reference["total"]
    plain = ["x", "y", "slow", "z"]
    assert [{k: r[k] for k in plain} for r in final] == [{k: r[k] for k in plain} for r in reference["final"]]
    for row in final:
        assert len(row["tags"]) == 2  # what fan_in zipped: join's row and side's row


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("reference")
    code, err = finish(start(tmp / "cache", "mp", tmp / "out.json"))
    assert code == 0, err
    return json.loads((tmp / "out.json").read_text())


@pytest.mark.timeout(400 * ROUNDS)
@pytest.mark.parametrize("executor", ["mp", "threaded"])
@pytest.mark.parametrize("target", ["group", "driver"])
def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, reference, executor, target):
    """One round by default; STILLHOUSE_CRASH_ROUNDS=N runs N rounds (hundreds of kills)."""
    rng = random.Random(f"{executor}-{target}")
    for round_index in range(ROUNDS):
        cache, out = tmp_path / f"cache-{round_index}", tmp_path / f"out-{round_index}.json"
        kills = kill_until_done(cache, out, executor, target, rng)
        assert kills >= 1
        check(json.loads(out.read_text()), reference)


def kill_until_done(
    cache: Path, out: Path, executor: str, target: str, rng: random.Random, variant: str = "sync"
) -> int:
    kills = 0
    for _attempt in range(40):
        process = start(cache, executor, out, variant)
        try:
            wait_until_running(cache, process)
            process.wait(timeout=rng.uniform(0.0, 1.0))
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL) if target == "driver" else kill_group(process)
            # EOF once every worker is gone too: orphans look for their driver every second.
            process.communicate(timeout=30)
            kills += 1
            assert group_is_gone(process.pid), "workers outlived their driver"
            continue
        finally:
            kill_group(process)
        _, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        return kills
    code, err = finish(start(cache, executor, out, variant))
    assert code == 0, err
    return kills


@pytest.mark.timeout(400 * ROUNDS)
@pytest.mark.parametrize("executor", ["mp", "threaded"])
def test_sigkill_during_async_steps_then_resume_is_exact(tmp_path, reference, executor):
    """The slow step (2 replicas), a routed branch and the fan-in are async steps with
    several batches in flight when the kill lands; the rerun returns the reference rows."""
    rng = random.Random(f"async-{executor}")
    for round_index in range(ROUNDS):
        cache, out = tmp_path / f"cache-{round_index}", tmp_path / f"out-{round_index}.json"
        kills = kill_until_done(cache, out, executor, "group", rng, variant="async")
        assert kills >= 1
        check(json.loads(out.read_text()), reference)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_then_resume_is_exact(tmp_path, reference, presses):
    cache, out = tmp_path / "cache", tmp_path / "out.json"
    process = start(cache, "mp", out)
    wait_until_running(cache, process)
    for _ in range(presses):
        os.killpg(process.pid, signal.SIGINT)  # a terminal sends it to the whole group
        time.sleep(0.05)
    code, err = finish(process, timeout=60)
    assert code != 0 and "KeyboardInterrupt" in err, err[-2000:]
    if presses == 1:
        assert "resume" in err
    assert group_is_gone(process.pid)
    code, err = finish(start(cache, "mp", out))
    assert code == 0, err
    check(json.loads(out.read_text()), reference)
