"""The third column: one Python process, a for loop over batches, the same row work
(`work.py`) and the same Parquet output (pyarrow), no engine. The practical limit.

Each function takes the workload's parameters and an output folder and returns the
number of result rows.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import work

ROWS_PER_TABLE = 1000


class _Leaf:
    """Appends rows to `<out>/<name>.parquet`, one row group per 1,000 rows."""

    def __init__(self, out: Path, name: str) -> None:
        self.path = out / f"{name}.parquet"
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[work.Row] = []
        self.rows = 0

    def write(self, rows: list[work.Row]) -> None:
        self.pending.extend(rows)
        if len(self.pending) >= ROWS_PER_TABLE:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        table = pa.Table.from_pylist(self.pending)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)
        self.rows += len(self.pending)
        self.pending = []

    def close(self) -> int:
        self._flush()
        if self.writer is not None:
            self.writer.close()
        return self.rows


def _batches(rows: int, batch: int, text_bytes: int = 0, start: int = 0) -> Any:
    for first in range(start, rows, batch):
        yield work.make_rows(first, min(batch, rows - first), text_bytes)


def startup(p: dict[str, Any], out: Path) -> int:
    leaf = _Leaf(out, "leaf")
    data = work.make_rows(0, p["rows"])
    for first in range(0, len(data), p["batch"]):
        leaf.write(work.add_one([dict(r) for r in data[first : first + p["batch"]]], "a"))
    return leaf.close()


def chain(p: dict[str, Any], out: Path) -> int:
    leaf = _Leaf(out, "second")
    for rows in _batches(p["rows"], p["batch"], p.get("text_bytes", 0)):
        leaf.write(work.add_one(work.add_one(rows, "a"), "b"))
    return leaf.close()


def chain_cached(p: dict[str, Any], out: Path) -> int:
    """A finished run's re-run: the results are on disk, read them back."""
    return pq.read_table(out / "second.parquet").num_rows


def topology(p: dict[str, Any], out: Path) -> int:
    rng = random.Random(0)
    everything: list[work.Row] = []
    for rows in _batches(p["rows"], p["batch"]):
        outs = [work.add_one([dict(r) for r in rows], c) for c in "abc"]
        joined = work.zip_rows(outs)
        chosen = rng.sample("def", 2)
        branches = [work.add_one([dict(r) for r in joined], c) for c in chosen]
        everything.extend(work.zip_rows(branches))
    leaf = _Leaf(out, "total")
    leaf.write(work.total(everything))
    return leaf.close()


def replicas(p: dict[str, Any], out: Path) -> int:
    leaf = _Leaf(out, "burn")
    for rows in _batches(p["rows"], p["batch"]):
        leaf.write(work.burn(rows, p["iterations"]))
    return leaf.close()


def resume(p: dict[str, Any], out: Path) -> int:
    """Finishing the second half: the least any resume can do."""
    leaf = _Leaf(out, "leaf")
    batches = -(-p["rows"] // p["batch"])
    start = (batches // 2) * p["batch"]
    for rows in _batches(p["rows"], p["batch"], start=start):
        leaf.write(work.mark(work.add_one(rows, "a"), p["sleep"]))
    return leaf.close()


FUNCTIONS = {
    ("startup", "fresh"): startup,
    ("chain", "fresh"): chain,
    ("chain", "prime"): chain,
    ("chain", "cached"): chain_cached,
    ("topology", "fresh"): topology,
    ("replicas", "fresh"): replicas,
    ("resume", "resume"): resume,
}
