"""Where a 1M-row run of the memory workload spends its CPU, thread by thread.

    uv run --no-sync python -m benchmarks.cpu_split [--rows 1000000] [--executors mp,threaded]
        [--bound none,compression,checkpoints] [--repeat 1]

Runs the memory workload's chain (a generator of 1 KB texts >> two trivial steps, in
batches of 1,000, one replica each) in a fresh process per run, as the harness runs
it. A sampling thread reads, 20 times a second, the CPU time of every thread of the
driver (`/proc/self/task`) and of every worker process (`/proc/<pid>`), and keeps the
last reading of each (less what a thread had used before `run()`). The run prints
its wall time, the driver's CPU thread by thread (threads of one name summed) and each
worker's CPU: on "threaded" the driver's main thread is the chain every batch
goes through, and on "mp" the driver's threads share one GIL.

`--bound` asks what a run would take if part of the checkpoint work cost nothing, by
switching that part off in the child process (its cache is thrown away, never reused):

- `compression`: checkpoints stored without zstd (`codec.COMPRESS_FROM` beyond any
  stream), so the driver writes 1.35x the bytes but never compresses;
- `checkpoints`: `FileStepStore.put` does nothing: no checkpoint at all.

Linux only (it reads `/proc`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import pipelines

BOUNDS = ("none", "compression", "checkpoints")
NATIVE = "(threads Python does not know)"
"""Threads in `/proc` but not in `threading.enumerate()`: the native threads of libraries
(importing pyarrow starts two)."""
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu(stat: str) -> float:
    """User + system seconds from a `/proc/.../stat` line."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class _Sampler(threading.Thread):
    """Last CPU reading of every thread of this process (by name) and every child."""

    def __init__(self) -> None:
        super().__init__(name="cpu-split-sampler", daemon=True)
        self.threads: dict[int, tuple[str, float]] = {}
        self.children: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.sample()

    def sample(self) -> None:
        names = {thread.native_id: thread.name for thread in threading.enumerate()}
        for tid in os.listdir("/proc/self/task"):
            try:
                cpu = _cpu(Path(f"/proc/self/task/{tid}/stat").read_text())
            except OSError:
                continue  # the thread ended between listing and reading
            name = names.get(int(tid)) or self.threads.get(int(tid), (NATIVE,))[0]
            self.threads[int(tid)] = (name, cpu)
        try:
            children = Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
        except OSError:
            children = []
        for pid in children:
            try:
                self.children[int(pid)] = _cpu(Path(f"/proc/{pid}/stat").read_text())
            except OSError:
                continue  # the worker ended: its last reading stays


def _switch_off(bound: str) -> None:
    if bound == "compression":
        from stillhouse.cache import codec

        codec.COMPRESS_FROM = 1 << 62
    elif bound == "checkpoints":
        from stillhouse.cache import store

        store.FileStepStore.put = lambda self, record: None  # type: ignore[method-assign]
        store.FileStepStore._check_counts = lambda self, log: None  # type: ignore[method-assign]


def child(executor: str, rows: int, bound: str, out: str) -> None:
    """One run in this process; its split written to `out` as JSON."""
    _switch_off(bound)
    cache = Path(out).parent / "cache"
    pipeline = pipelines.chain(str(cache), executor, {"rows": rows, "batch": 1000, "text_bytes": 1024})
    sampler = _Sampler()
    sampler.sample()
    before = {tid: cpu for tid, (_, cpu) in sampler.threads.items()}  # imports, building the pipeline
    sampler.start()
    started = time.perf_counter()
    pipeline.run(use_cache=False, progress=False)
    wall = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    threads: dict[str, float] = {}
    for tid, (name, cpu) in sampler.threads.items():
        if name != sampler.name:
            threads[name] = threads.get(name, 0.0) + cpu - before.get(tid, 0.0)
    split = {"wall": wall, "threads": threads, "workers": sorted(sampler.children.values(), reverse=True)}
    Path(out).write_text(json.dumps(split))


def _run(executor: str, rows: int, bound: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "split.json")
        subprocess.run(
            [sys.executable, "-m", "benchmarks.cpu_split", "--child", executor, "--rows", str(rows),
             "--bound", bound, "--out", out],
            check=True, timeout=900, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return json.loads(Path(out).read_text())


def _describe(executor: str, bound: str, split: dict[str, Any]) -> str:
    threads = sorted(split["threads"].items(), key=lambda item: -item[1])
    driver = sum(cpu for _, cpu in threads)
    lines = [
        f"{executor}, bound {bound}: run {split['wall']:.2f} s; driver CPU {driver:.2f} s, "
        f"workers {sum(split['workers']):.2f} s"
    ]
    lines += [f"    {name:30s} {cpu:6.2f} s" for name, cpu in threads if cpu >= 0.05]
    if split["workers"]:
        lines.append("    workers: " + ", ".join(f"{cpu:.2f} s" for cpu in split["workers"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--executors", default="mp,threaded")
    parser.add_argument("--bound", default="none", help="comma-separated: " + ", ".join(BOUNDS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", metavar="EXECUTOR", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.bound, args.out)
        return
    bounds = args.bound.split(",")
    unknown = sorted(set(bounds) - set(BOUNDS))
    if unknown:
        parser.error(f"unknown --bound {', '.join(unknown)}; choose from {', '.join(BOUNDS)}")
    for _ in range(args.repeat):  # interleaved: every case once per round
        for executor in args.executors.split(","):
            for bound in bounds:
                print(_describe(executor, bound, _run(executor, args.rows, bound)), flush=True)


if __name__ == "__main__":
    main()
