"""Runs one measurement: a worker subprocess, its process tree sampled from here.

Each measurement gets a fresh cache folder, a fresh interpreter (so imports, plugin
loading and worker start-up count every time, as for a user's script), and a
background thread that sums the resident memory of the worker and every process
below it. Nothing here knows about a particular engine beyond which interpreter
runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.work import PROGRESS_ENV
from benchmarks.worker import MARKER

ROOT = Path(__file__).resolve().parent.parent

SAMPLE_INTERVAL = 0.05
"""Seconds between memory samples: short enough to catch a peak that lasts a batch."""

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Column:
    """One engine configuration: a column of the results table."""

    key: str  # "stillhouse-mp", "stillhouse-threaded", "distilabel", "plain"
    engine: str  # "stillhouse", "distilabel", "plain"
    python: str
    executor: str | None = None
    paths: tuple[str, ...] = ()  # first on PYTHONPATH: another revision's sources
    env: tuple[tuple[str, str], ...] = ()  # extra environment of its workers


class MeasurementError(RuntimeError):
    pass


# -- memory of a process tree -----------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants, alive now."""
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class TreeSampler(threading.Thread):
    """Peak over time of the summed RSS (and optionally PSS) of a process tree."""

    def __init__(self, pid: int, *, pss: bool = False) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.pss = pss
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = tree(self.pid)
            self.peak_rss = max(self.peak_rss, sum(_rss(p) for p in pids))
            if self.pss:
                self.peak_pss = max(self.peak_pss, sum(_pss(p) for p in pids))
            self.peak_processes = max(self.peak_processes, len(pids))
            self._halt.wait(SAMPLE_INTERVAL)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# -- running workers ----------------------------------------------------------------------


def worker_env(extra: dict[str, str] | None = None, paths: tuple[str, ...] = ()) -> dict[str, str]:
    env = dict(os.environ)
    # Bytecode caching is on for users; without it every import compiles from source.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for name in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [*paths, str(ROOT), env.get("PYTHONPATH", "")] if p)
    env["STILLHOUSE_PROGRESS"] = "0"
    env["DISTILABEL_LOG_LEVEL"] = "WARNING"  # its per-batch INFO lines cost it time
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra or {})
    return env


def _start(column: Column, spec: dict[str, Any], log: Path, env: dict[str, str]) -> subprocess.Popen:
    full = {**spec, "engine": column.engine, "executor": column.executor}
    handle = log.open("ab")
    try:
        return subprocess.Popen(
            [column.python, "-m", "benchmarks.worker", json.dumps(full)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=handle, start_new_session=True,
        )
    finally:
        handle.close()


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_worker(
    column: Column, spec: dict[str, Any], log: Path, *, timeout: float, pss: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one worker to completion; its JSON result plus the tree's peak memory."""
    process = _start(column, spec, log, env or column_env(column))
    sampler = TreeSampler(process.pid, pss=pss)
    sampler.start()
    started = time.perf_counter()
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        process.communicate()
        raise MeasurementError(f"timed out after {timeout:.0f} s; log tail:\n{_tail(log)}") from None
    finally:
        sampler.stop()
        _kill_group(process)  # nothing may outlive a measurement
    wall = time.perf_counter() - started
    lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith(MARKER)]
    if process.returncode != 0 or not lines:
        raise MeasurementError(f"worker exited with {process.returncode}; log tail:\n{_tail(log)}")
    result = json.loads(lines[-1][len(MARKER) :])
    result.update(wall_seconds=wall, peak_rss_bytes=sampler.peak_rss, processes=sampler.peak_processes)
    if pss:
        result["peak_pss_bytes"] = sampler.peak_pss
    return result


def kill_half_way(
    column: Column, spec: dict[str, Any], log: Path, progress: Path, batches: int, *,
    timeout: float, env: dict[str, str],
) -> int:
    """Start a run and SIGKILL its whole process group once half its batches are done."""
    process = _start(column, spec, log, env)
    deadline = time.monotonic() + timeout
    try:
        while True:
            done = progress.stat().st_size if progress.exists() else 0
            if done >= batches // 2:
                break
            if process.poll() is not None:
                raise MeasurementError(f"the run to kill ended by itself first; log tail:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise MeasurementError(f"the run to kill never got half way; log tail:\n{_tail(log)}")
            time.sleep(0.002)
    finally:
        _kill_group(process)
        process.communicate()
    return done


def column_env(column: Column, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker of `column` (with another revision's sources first)."""
    return worker_env({**dict(column.env), **(extra or {})}, column.paths)


def _tail(log: Path, chars: int = 1200) -> str:
    """The end of a worker's stderr, kept in the results (its folder is removed)."""
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def directory_bytes(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def measure(
    column: Column, case: dict[str, Any], scratch: Path, *, timeout: float,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One measurement of `case` on `column`, in a fresh folder that is removed after."""
    timeout = min(timeout, case.get("timeout", timeout))
    work_dir = scratch / f"{case['id']}-{column.key}-{time.monotonic_ns()}"
    cache = work_dir / "cache"
    work_dir.mkdir(parents=True)
    log = work_dir / "worker.log"
    extra = {"DISTILABEL_CACHE_DIR": str(cache)}
    spec = {"pipeline": case["pipeline"], "params": case["params"], "cache_dir": str(cache)}
    pss = case.get("pss", False)
    try:
        if case["kind"] == "cached":
            run_worker(column, {**spec, "mode": "prime"}, log, timeout=timeout, env=column_env(column, extra))
        if case["kind"] == "resume" and column.engine != "plain":
            progress = work_dir / "progress"
            extra[PROGRESS_ENV] = str(progress)
            batches = -(-case["params"]["rows"] // case["params"]["batch"])
            killed_at = kill_half_way(
                column, {**spec, "mode": "resume-first"}, log, progress, batches,
                timeout=timeout, env=column_env(column, extra),
            )
        if profile is not None and column.engine == "stillhouse":
            profile.mkdir(parents=True, exist_ok=True)
            extra["BENCH_PROFILE"] = str(profile / f"{case['id']}-{column.key}-{time.time_ns()}.prof")
        mode = {"cached": "cached", "resume": "resume"}.get(case["kind"], "fresh")
        try:
            result = run_worker(column, {**spec, "mode": mode}, log, timeout=timeout, pss=pss, env=column_env(column, extra))
        except MeasurementError as exc:
            if case["kind"] != "resume" or column.engine == "plain":
                raise
            after = progress.stat().st_size - killed_at if progress.exists() else 0
            raise MeasurementError(
                f"resume after a kill at {killed_at}/{batches} batches finished {after} more batches: {exc}"
            ) from None
        if case["kind"] == "resume" and column.engine != "plain":
            result["killed_after_batches"] = killed_at
            # The leaf's batches the resumed run ran: the other half when nothing is redone.
            result["leaf_batches_after_kill"] = progress.stat().st_size - killed_at if progress.exists() else 0
        if case.get("disk"):
            result["cache_bytes"] = directory_bytes(cache)
        return result
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        os.sync()  # the next measurement's fsyncs must not pay for this one's writes


def engine_version(column: Column) -> str:
    module = {"stillhouse": "stillhouse-core", "distilabel": "distilabel", "plain": "pyarrow"}[column.engine]
    code = f"import importlib.metadata as m; print(m.version({module!r}))"
    try:
        out = subprocess.run([column.python, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def default_python() -> str:
    return sys.executable
