"""How a batch of rows could cross processes on "mp": `python -m benchmarks.transport`.

One batch of the memory workload (1,000 rows of ~1 KB text, ~1 MB) is sent the ways
issue 20 asked about, each timed on its own (fastest of `--repeat` runs, ms per batch: this machine may be
busy, and the fastest run is the least disturbed):

- pickle (what `multiprocessing` queues do): dumps in the sender, loads in the driver;
- Arrow IPC: `Table.from_pylist` in the sender, the IPC stream write and read, and
  `to_pylist` in the driver, which needs rows (the cache codec, the Parquet writer and
  the next step's task all take row dicts);
- the pipe itself, at the default 64 KB buffer and widened to 1 MB (`F_SETPIPE_SZ`,
  what `executors/_mp_worker.widen` does): a writer thread and a reader in this process.

Shared memory would replace only the pipe's part (a copy into the segment remains).
"""

from __future__ import annotations

import argparse
import os
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from benchmarks import work

F_SETPIPE_SZ = 1031  # Linux


def _timed(function: Callable[[], Any], repeat: int) -> float:
    """Median milliseconds of one call."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times) * 1e3  # the least disturbed run: this machine may be busy


def _pipe_ms(blob: bytes, buffer: int, repeat: int) -> tuple[float, float]:
    """Median ms to move `blob` through a pipe with `buffer` bytes, and reads per batch."""
    read_end, write_end = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(write_end, F_SETPIPE_SZ, buffer)
    except (ImportError, OSError):
        os.close(read_end)
        os.close(write_end)
        return float("nan"), float("nan")

    def write() -> None:
        view = memoryview(blob)
        while view:
            view = view[os.write(write_end, view) :]

    times, reads = [], 0
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            writer = threading.Thread(target=write)
            writer.start()
            got = 0
            while got < len(blob):
                got += len(os.read(read_end, len(blob) - got))
                reads += 1
            writer.join()
            times.append(time.perf_counter() - started)
    finally:
        os.close(read_end)
        os.close(write_end)
    return min(times) * 1e3, reads / repeat


def measure(rows: int = 1000, text_bytes: int = 1000, repeat: int = 50) -> dict[str, float]:
    batch = work.add_one(work.make_rows(0, rows, text_bytes), "a")
    blob = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
    table = pa.Table.from_pylist(batch)

    def ipc_write() -> pa.Buffer:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue()

    stream = ipc_write()
    figures = {
        "batch_mb": len(blob) / 1e6,
        "pickle_dumps_ms": _timed(lambda: pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL), repeat),
        "pickle_loads_ms": _timed(lambda: pickle.loads(blob), repeat),
        "arrow_from_pylist_ms": _timed(lambda: pa.Table.from_pylist(batch), repeat),
        "arrow_ipc_write_ms": _timed(ipc_write, repeat),
        "arrow_ipc_read_ms": _timed(lambda: pa.ipc.open_stream(stream).read_all(), repeat),
        "arrow_to_pylist_ms": _timed(table.to_pylist, repeat),
    }
    for label, size in (("64k", 1 << 16), ("1m", 1 << 20)):
        figures[f"pipe_{label}_ms"], figures[f"pipe_{label}_reads"] = _pipe_ms(blob, size, repeat)
    figures["pickle_total_ms"] = figures["pickle_dumps_ms"] + figures["pickle_loads_ms"]
    figures["arrow_total_ms"] = sum(figures[f"arrow_{k}_ms"] for k in ("from_pylist", "ipc_write", "ipc_read", "to_pylist"))
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--text-bytes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)
    figures = measure(args.rows, args.text_bytes, args.repeat)
    print(f"one batch: {args.rows} rows x {args.text_bytes} B = {figures['batch_mb']:.2f} MB pickled; "
          f"fastest of {args.repeat}; load average {os.getloadavg()[0]:.2f}")
    for key, value in figures.items():
        if key != "batch_mb":
            print(f"{key:<24} {value:8.3f}")


if __name__ == "__main__":
    main()
