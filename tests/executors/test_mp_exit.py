"""A driver that ran a pipeline on "mp" and read its results exits cleanly.

The driver's last moments are where native threads bite: a thread of pyarrow (or of
ours) still calling into Python while the interpreter finalizes aborts the process
("terminate called without an active exception", SIGABRT) after a run that succeeded.
The driver here exits right after reading the results, where that window is widest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("stillhouse.distiset")
pytest.importorskip("stillhouse.cache")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRIVER = textwrap.dedent(
    """
    import sys
    import threading

    from stillhouse.core import Pipeline
    from stillhouse.core.steps import LoadDataFromDicts
    from stillhouse.core.testing import Identity, rows_of

    if __name__ == "__main__":
        with Pipeline(name="exit", cache_dir=sys.argv[1], executor="mp") as pipeline:
            loader = LoadDataFromDicts(data=[{"x": i} for i in range(60)], batch_size=10)
            loader >> Identity(name="same", input_batch_size=7)
        result = pipeline.run(use_cache=True, progress=False)
        assert [row["x"] for row in rows_of(result)] == list(range(60))
        receivers = [t.name for t in threading.enumerate() if t.name == "stillhouse-mp-receiver"]
        assert not receivers, f"the mp receiver outlived the run: {receivers}"
    """
)

RUNS = 3
"""The abort needed a thread to be late by a few milliseconds at exit: several drivers
give it several chances (a loaded machine gives it more)."""


@pytest.mark.timeout(400)
def test_a_driver_exits_with_code_0_after_an_mp_run_and_reading_its_results(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "STILLHOUSE_PROGRESS": "0"}
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    for run in range(RUNS):
        driver = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"cache-{run}")],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            _, err = driver.communicate(timeout=120)
        finally:
            driver.kill()
            driver.wait(10)
        assert "terminate called" not in err, err[-3000:]
        assert driver.returncode == 0, f"run {run}: exit code {driver.returncode}\n{err[-3000:]}"


SLOW_STEPS = textwrap.dedent(
    """
    import os
    import time

    from stillhouse.core.testing import Identity

    if os.environ.get("DRIVER_PID", str(os.getpid())) != str(os.getpid()):  # a worker unpickling its step
        open(os.path.join(os.environ["MARKERS"], str(os.getpid())), "w").close()
        time.sleep(3)  # the driver is killed meanwhile


    class SlowToImport(Identity):
        pass
    """
)

SPAWNING = textwrap.dedent(
    """
    import os
    import sys

    if __name__ == "__main__":
        os.environ["DRIVER_PID"] = str(os.getpid())
        from stillhouse.core import Pipeline, StepResources
        from stillhouse.core.steps import LoadDataFromDicts
        from slow_steps import SlowToImport

        with Pipeline(name="orphans", cache_dir=sys.argv[1], executor="mp") as pipeline:
            loader = LoadDataFromDicts(data=[{"x": i} for i in range(20)], batch_size=10)
            loader >> SlowToImport(name="same", resources=StepResources(replicas=2))
        pipeline.run(use_cache=False, progress=False)
    """
)


def _group(pgid: int) -> list[str]:
    """The live (not zombie) processes of process group `pgid`, from /proc."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(entry)
    return alive


def _described(pids: list[str]) -> dict[str, str]:
    """Each process's command line and state, so that a failure says what was left."""
    described = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")[:200]
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            command, state = "(gone)", "-"
        described[pid] = f"{state} {command}"
    return described


@pytest.mark.timeout(180)
def test_spawned_workers_whose_driver_died_while_they_started_exit(tmp_path) -> None:
    """A worker started by "spawn" imports and unpickles its step before its code runs; a
    driver SIGKILLed meanwhile left it to init, where it waited for tasks forever."""
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("needs Linux /proc")
    markers = tmp_path / "markers"
    markers.mkdir()
    (tmp_path / "slow_steps.py").write_text(SLOW_STEPS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *(p for p in sys.path if p)]),
           "STILLHOUSE_PROGRESS": "0", "STILLHOUSE_START_METHOD": "spawn", "MARKERS": str(markers)}
    script = tmp_path / "driver.py"
    script.write_text(SPAWNING)
    driver = subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache")], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(markers.iterdir()) and driver.poll() is None:
            time.sleep(0.01)  # until a worker is importing its step
        assert any(markers.iterdir()), "no worker started"
        driver.kill()
        driver.wait(10)
        deadline = time.monotonic() + 60  # 3 s of import, then PARENT_CHECK_INTERVAL: plenty
        while _group(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _group(driver.pid)
        assert left == [], f"still running 60 s after the driver died: {_described(left)}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)


def test_a_driver_that_died_but_is_not_reaped_yet_counts_as_gone() -> None:
    """A driver killed with SIGKILL is a zombie until its parent reaps it, and signal 0
    still reaches a zombie: a worker checking in that moment took it for alive and, its
    new parent already set, waited for tasks forever."""
    from stillhouse.executors._mp_worker import _alive

    if not os.path.exists("/proc/self/stat"):
        pytest.skip("needs Linux /proc")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _state(child.pid) != "Z":
            time.sleep(0.01)  # exited, not reaped: a zombie
        assert _state(child.pid) == "Z"
        assert not _alive(child.pid)
        assert _alive(os.getpid())
    finally:
        child.wait(10)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]
