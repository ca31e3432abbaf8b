"""Checkpoint cost per batch must not grow with the number of batches already saved.

    uv run --no-sync python -m benchmarks.checkpoint_cost [--batches 50000] [--rows 50]

Appends `--batches` output batches of `--rows` small rows to a real step store (the
same code path the engine uses) and reports the mean time per checkpoint over the
first and the last 1,000 batches, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from stillhouse.cache.store import FileStepStore
from stillhouse.core.engine import BatchRecord


def measure(batches: int, rows: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = FileStepStore.open(
            Path(tmp) / "step", step_name="step", signature="s", batching=rows,
            predecessors={}, fresh=True,
        )
        payload = [{"x": i, "text": "x" * 64} for i in range(rows)]
        timings = []
        for index in range(batches):
            started = time.perf_counter()
            store.put(BatchRecord((0, index), payload))
            timings.append(time.perf_counter() - started)
        store.mark_finished()
        started = time.perf_counter()
        reopened = FileStepStore.open(
            Path(tmp) / "step", step_name="step", signature="s", batching=rows,
            predecessors={}, fresh=False,
        )
        assert reopened.get((0, batches - 1)) is not None
        reopen = time.perf_counter() - started
        store.close()
        reopened.close()
    # Medians: the once-a-second group fsync lands in some windows and not others.
    first = statistics.median(timings[:1000])
    last = statistics.median(timings[-1000:])
    return {
        "first_1k_us": first * 1e6,
        "last_1k_us": last * 1e6,
        "ratio": last / first,
        "mean_all_us": statistics.mean(timings) * 1e6,
        "reopen_s": reopen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=50_000)
    parser.add_argument("--rows", type=int, default=50)
    args = parser.parse_args()
    result = measure(args.batches, args.rows)
    print(
        f"{args.batches} batches of {args.rows} rows: first 1k {result['first_1k_us']:.1f} us/batch, "
        f"last 1k {result['last_1k_us']:.1f} us/batch (medians, ratio {result['ratio']:.2f}; "
        f"mean over all, fsyncs included, {result['mean_all_us']:.1f} us); "
        f"reopening the store and finding the last batch: {result['reopen_s'] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
