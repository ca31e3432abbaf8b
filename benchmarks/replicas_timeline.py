"""Where a run of the replicas workload spends its time, replica by replica.

    uv run --no-sync python -m benchmarks.replicas_timeline [--rows 800] [--pairs 3]

Runs the replicas workload ("mp", a generator >> ~5 ms of pure Python per row in
batches of 10) with 1 and then 2 replicas, `--pairs` times, each run in a fresh
process as the harness runs it. The step records when each batch started and ended in
its worker, so every run splits into: the start (from calling `run()` to the first
batch of the CPU-bound step), the replicas' busy time (per batch: wall time, the
replica's own CPU time, and how often another process took its core), and the end
(from the last batch to `run()` returning). The speed-up of 2 replicas over 1 is the harness's figure; the
split says what limits it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import work
from benchmarks.pipelines import Burn, Rows
from stillhouse.core import Pipeline, StepInput


class TimedBurn(Burn):
    """`Burn`, appending `[pid, started, ended, cpu, preempted]` per batch to `log`:
    wall clock, this thread's CPU seconds, and the process's involuntary context switches
    (another process took the core)."""

    log: str

    def process(self, inputs: StepInput) -> Any:
        started, cpu, preempted = time.time(), time.thread_time(), _preemptions()
        rows = work.burn(inputs, self.iterations)
        record = [os.getpid(), started, time.time(), time.thread_time() - cpu, _preemptions() - preempted]
        with open(self.log, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        yield rows


def _preemptions() -> int:
    """This process's involuntary context switches so far (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    return int(line.split(":")[1])
    except OSError:
        pass
    return 0


def child(replicas: int, rows: int, iterations: int, out: str) -> None:
    """One run in this process; its split written to `out` as JSON, its cache and batch
    log beside `out` (in the caller's temporary folder, removed with it)."""
    scratch = Path(out).parent
    log = scratch / "batches.jsonl"
    with Pipeline(name="replicas-timeline", cache_dir=str(scratch / "cache"), executor="mp") as pipeline:
        Rows(rows=rows, batch_size=10) >> TimedBurn(
            iterations=iterations, log=str(log), input_batch_size=10, resources={"replicas": replicas}
        )
    called = time.time()
    pipeline.run(use_cache=False, progress=False)
    returned = time.time()
    batches = [json.loads(line) for line in log.read_text().splitlines()]
    per_replica = {}
    for pid in sorted({b[0] for b in batches}):
        mine = [b for b in batches if b[0] == pid]
        busy = sum(end - start for _, start, end, _, _ in mine)
        per_replica[pid] = {
            "batches": len(mine), "busy": busy, "ms_per_batch": 1000 * busy / len(mine),
            "cpu_ms_per_batch": 1000 * sum(b[3] for b in mine) / len(mine),
            "preempted_per_batch": sum(b[4] for b in mine) / len(mine),
        }
    split = {
        "run": returned - called,
        "start": min(b[1] for b in batches) - called,
        "end": returned - max(b[2] for b in batches),
        "replicas": list(per_replica.values()),
    }
    Path(out).write_text(json.dumps(split))


def _run(replicas: int, rows: int, iterations: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "split.json")
        subprocess.run(
            [sys.executable, "-m", "benchmarks.replicas_timeline", "--child", str(replicas),
             "--rows", str(rows), "--iterations", str(iterations), "--out", out],
            check=True, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return json.loads(Path(out).read_text())


def _describe(split: dict[str, Any]) -> str:
    replicas = ", ".join(
        f"{r['batches']} batches busy {r['busy']:.2f} s ({r['ms_per_batch']:.1f} ms each, "
        f"{r['cpu_ms_per_batch']:.1f} ms CPU, preempted {r['preempted_per_batch']:.1f}x)"
        for r in split["replicas"]
    )
    return f"run {split['run']:.2f} s = start {split['start']:.2f} s + [{replicas}] + end {split['end']:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--child", type=int, metavar="REPLICAS", help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.iterations, args.out)
        return
    iterations = work.calibrate_burn()
    ratios = []
    for _ in range(args.pairs):
        one, two = _run(1, args.rows, iterations), _run(2, args.rows, iterations)
        ratios.append(one["run"] / two["run"])
        print(f"1 replica:  {_describe(one)}")
        print(f"2 replicas: {_describe(two)}")
        print(f"speed-up {ratios[-1]:.2f}x")
    print(f"median {statistics.median(ratios):.2f}x, worst {min(ratios):.2f}x over {len(ratios)} pairs")


if __name__ == "__main__":
    main()
