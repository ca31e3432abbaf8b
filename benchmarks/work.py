"""The row work every column does: the same functions under stillhouse, distilabel and
the plain loop, so the columns differ only in what runs them.

Standard library only: distilabel's virtual environment imports this module too.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

Row = dict[str, Any]

_ALPHABET = "abcdefghijklmnopqrstuvwxyz      ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:0123456789"
_TEXT = random.Random(0).randbytes(1 << 20).translate(bytes(ord(_ALPHABET[b % len(_ALPHABET)]) for b in range(256))).decode()
"""1 MiB of fixed pseudo-random text. Rows take their ~1 KB `text` from scattered
offsets, so neighbouring rows share nothing and Parquet's compression gets no more out
of them than out of real text (a repeated pattern would compress 15 times)."""

PROGRESS_ENV = "BENCH_PROGRESS_FILE"
"""When set, `Mark` steps append one byte per finished batch: the resume workload reads
its size to know when half the batches are done (and how many a resume redid)."""


def make_rows(start: int, count: int, text_bytes: int = 0) -> list[Row]:
    """Rows `start .. start+count-1`: an int `x`, plus a unique ~`text_bytes` text."""
    if not text_bytes:
        return [{"x": i} for i in range(start, start + count)]
    body = text_bytes - 12
    span = len(_TEXT) - body
    return [
        {"x": i, "text": f"{i:012d}" + _TEXT[(i * 7919) % span : (i * 7919) % span + body]}
        for i in range(start, start + count)
    ]


def add_one(rows: list[Row], column: str) -> list[Row]:
    """The trivial step: one new column from `x`."""
    for row in rows:
        row[column] = row["x"] + 1
    return rows


def burn(rows: list[Row], iterations: int) -> list[Row]:
    """The CPU-bound step: `iterations` of pure-Python arithmetic per row (~5 ms)."""
    for row in rows:
        acc = 0
        for i in range(iterations):
            acc += i * i % 7
        row["burn"] = acc
    return rows


def zip_rows(inputs: tuple[list[Row], ...] | list[list[Row]]) -> list[Row]:
    """Fan-in and convergence: row i of every input merged into one row."""
    merged = []
    for parts in zip(*inputs, strict=True):
        row: Row = {}
        for part in parts:
            row.update(part)
        merged.append(row)
    return merged


def total(rows: list[Row]) -> list[Row]:
    """The global step: every row gets the number of rows seen."""
    for row in rows:
        row["n_total"] = len(rows)
    return rows


def mark(rows: list[Row], sleep: float) -> list[Row]:
    """The resume workload's leaf: some waiting per batch, then a progress byte."""
    if sleep:
        time.sleep(sleep)
    for row in rows:
        row["done"] = True
    path = os.environ.get(PROGRESS_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)
    return rows


def calibrate_burn(target_seconds: float = 0.005) -> int:
    """Iterations of `burn` that take about `target_seconds` for one row here."""
    probe = 20_000
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        burn([{"x": 0}], probe)
        best = min(best, time.perf_counter() - started)
    return max(1000, int(probe * target_seconds / best))
