"""Wall time of one small pipeline on "mp" and on "ray" (docs/executors/ray.md quotes it).

    uv run --no-sync python -m tests.ray.benchmark_ray_vs_mp [--rows 10000] [--repeat 3]

10k rows in batches of 50 through two trivial steps: what is measured is each
executor's overhead (starting workers, moving ~400 batches), not the steps. "ray
cold" includes starting a local Ray runtime, as a lone `run()` does; "ray warm" runs
on a runtime started beforehand (`start_local_runtime()`), as a notebook would.
Not collected by pytest (no `test_` prefix).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.steps import Double, Tag


def build(executor: str, rows: int, cache_dir: str) -> Pipeline:
    with Pipeline(name=f"bench-{executor}", executor=executor, cache_dir=cache_dir) as pipeline:
        loader = LoadDataFromDicts(data=[{"x": i} for i in range(rows)], batch_size=50)
        loader >> Double(input_batch_size=50) >> Tag(tag="t", input_batch_size=50)
    return pipeline


def timed(executor: str, rows: int) -> float:
    with tempfile.TemporaryDirectory() as cache_dir:
        pipeline = build(executor, rows, cache_dir)
        started = time.perf_counter()
        pipeline.run(use_cache=False, progress=False)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("stillhouse").setLevel(logging.WARNING)  # no run summaries in the way
    logging.getLogger("stillhouse").addHandler(logging.NullHandler())
    results: dict[str, list[float]] = {"mp": [], "ray cold": [], "ray warm": []}
    for _ in range(args.repeat):
        results["mp"].append(timed("mp", args.rows))
        results["ray cold"].append(timed("ray", args.rows))
    import ray

    from stillhouse.ray import start_local_runtime

    started = time.perf_counter()
    start_local_runtime()
    runtime_start = time.perf_counter() - started
    for _ in range(args.repeat):
        results["ray warm"].append(timed("ray", args.rows))
    ray.shutdown()
    print(f"{args.rows} rows, batch 50, 2 steps; median of {args.repeat} (min-max), seconds:")
    for name, times in results.items():
        print(f"  {name:9s} {statistics.median(times):6.2f}  ({min(times):.2f}-{max(times):.2f})")
    print(f"  (starting the local Ray runtime alone: {runtime_start:.2f})")


if __name__ == "__main__":
    main()
