"""A run killed or interrupted on one executor resumes on another with the exact result.

Drivers run `tests/support/crash_pipeline.py` in their own session (as a terminal
would), so a kill can take the whole group or the driver alone; the driver starts its
own local Ray runtime, which must not outlive it.
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

from tests.support.crash_pipeline import ROWS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def start(cache: Path, executor: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STILLHOUSE_PROGRESS": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.crash_pipeline", str(cache), executor, str(out)],
        cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 150) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    finally:
        end_session(process.pid)
    return process.returncode, err


def session_processes(sid: int) -> dict[int, str]:
    """`{pid: command line}` of the live processes of session `sid`.

    Ray puts each worker in a process group of its own, so the session (which
    `start_new_session` gave the driver) is what holds everything a run started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue  # it ended while we looked
    return found


def end_session(sid: int) -> None:
    """Kill whatever the driver started that is still there (Ray's helpers linger)."""
    for pid in session_processes(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def workers_gone(sid: int, timeout: float = 30) -> bool:
    """No step worker (a Ray actor or an "mp" process) of the run is left.

    Ray's node helpers (dashboard and runtime-env agents) notice their raylet is gone
    on their own schedule, up to a minute later; they hold no step and no data."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [cmd for cmd in session_processes(sid).values() if "StepActor" in cmd or "crash_pipeline" in cmd]
        if not left:
            return True
        time.sleep(0.1)
    return False


CHECKPOINT_BYTES = 1500
"""About 6 of the 40 batches of step "slow" (the whole log is ~8.5 kB): a kill then lands
midway. Waiting on progress, not a delay: Ray takes seconds to start on 2 cores."""


def wait_until_midway(cache: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(log.stat().st_size for log in cache.glob("crash/steps/slow-*/batches.log")) >= CHECKPOINT_BYTES:
            return
        time.sleep(0.02)
    raise AssertionError("the run never checkpointed a few batches of 'slow'")


def check(rows: dict, reference: dict) -> None:
    final = rows["final"]
    assert [r["x"] for r in final] == list(range(ROWS)), "rows lost, duplicated or reordered"
    assert rows["total"] == reference["total"]
    plain = ["x", "y", "slow", "z"]
    assert [{k: r[k] for k in plain} for r in final] == [{k: r[k] for k in plain} for r in reference["final"]]
    assert all(len(row["tags"]) == 2 for row in final)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("reference")
    code, err = finish(start(tmp / "cache", "mp", tmp / "out.json"))
    assert code == 0, err
    return json.loads((tmp / "out.json").read_text())


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("first", "then", "target"),
    [("mp", "ray", "group"), ("ray", "mp", "driver")],
)
def test_sigkill_midway_then_resume_on_another_executor_is_exact(tmp_path, reference, first, then, target):
    cache, out = tmp_path / "cache", tmp_path / "out.json"
    process = start(cache, first, out)
    try:
        wait_until_midway(cache)
        os.kill(process.pid, signal.SIGKILL) if target == "driver" else kill_group(process)
        process.communicate(timeout=10)
        # A killed driver takes its Ray runtime (raylet, GCS) and so its actors with it.
        assert workers_gone(process.pid), "workers outlived their driver"
    finally:
        end_session(process.pid)
    assert not out.exists()
    code, err = finish(start(cache, then, out))
    assert code == 0, err[-3000:]
    check(json.loads(out.read_text()), reference)


@pytest.mark.timeout(300)
def test_ctrl_c_on_ray_stops_gracefully_and_resumes_exactly(tmp_path, reference):
    cache, out = tmp_path / "cache", tmp_path / "out.json"
    process = start(cache, "ray", out)
    try:
        wait_until_midway(cache)
        os.killpg(process.pid, signal.SIGINT)  # a terminal sends it to the whole group
        code, err = process.communicate(timeout=90)
        assert code != 0 and "KeyboardInterrupt" in err, err[-3000:]
        assert "resume" in err
        assert "died" not in err, "an actor was killed by Ctrl+C instead of finishing its batch"
        assert workers_gone(process.pid), "actors outlived the interrupted driver"
    finally:
        end_session(process.pid)
    code, err = finish(start(cache, "mp", out))
    assert code == 0, err[-3000:]
    check(json.loads(out.read_text()), reference)
