"""What this machine gives two processes burning CPU: the ceiling of the replicas target.

    uv run --no-sync python -m benchmarks.parallel_ceiling [--rows 800] [--pairs 3]

Runs the replicas workload's row work (`work.burn`, ~5 ms of pure Python per row, in
batches of 10) with no engine at all: all rows in one forked process, then half the
rows in each of two forked processes at once, `--pairs` times. The ratio of the two
times is what two replicas could reach here if the engine cost nothing; the engine's
"2 replicas vs 1" is measured against the same machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Any

from benchmarks import work


def _burn_rows(count: int, iterations: int, cpu: Any) -> None:
    rows = [{"x": i} for i in range(count)]
    started = time.thread_time()
    for start in range(0, count, 10):
        work.burn(rows[start : start + 10], iterations)
    with cpu.get_lock():
        cpu.value += time.thread_time() - started


def _timed(processes: list[multiprocessing.process.BaseProcess]) -> float:
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join(600)
        if process.exitcode != 0:
            raise RuntimeError(f"a burn process ended with exit code {process.exitcode}")
    return time.perf_counter() - started


def measure(rows: int, pairs: int) -> list[tuple[float, float, float, float]]:
    """Per pair: seconds of one process, of two, and the CPU milliseconds per batch of
    10 rows in each case."""
    ctx = multiprocessing.get_context("fork")
    iterations = work.calibrate_burn()
    results = []
    for _ in range(pairs):
        cpu_one, cpu_two = ctx.Value("d", 0.0), ctx.Value("d", 0.0)
        one = _timed([ctx.Process(target=_burn_rows, args=(rows, iterations, cpu_one))])
        two = _timed([ctx.Process(target=_burn_rows, args=(rows // 2, iterations, cpu_two)) for _ in range(2)])
        batches = rows / 10
        results.append((one, two, 1000 * cpu_one.value / batches, 1000 * cpu_two.value / batches))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    results = measure(args.rows, args.pairs)
    for one, two, cpu_one, cpu_two in results:
        print(f"one process {one:.2f} s ({cpu_one:.1f} ms CPU per batch), "
              f"two processes {two:.2f} s ({cpu_two:.1f} ms): {one / two:.2f}x")
    ratios = [one / two for one, two, _, _ in results]
    print(f"median {statistics.median(ratios):.2f}x, worst {min(ratios):.2f}x over {len(ratios)} pairs")


if __name__ == "__main__":
    main()
