"""What a user sees while a run goes: a live table on a terminal, log lines otherwise,
and a summary table at the end."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from stillhouse.core.engine.state import StepState

logger = logging.getLogger("stillhouse.progress")

PROGRESS_ENV = "STILLHOUSE_PROGRESS"
_LOG_EVERY = 30.0
_REFRESH_EVERY = 0.25


def progress_enabled(requested: bool | None) -> bool:
    if requested is not None:
        return requested
    if os.environ.get(PROGRESS_ENV, "").lower() in {"0", "false", "no", "off"}:
        return False
    return sys.stderr.isatty()


class Progress:
    """Calls are cheap: the view refreshes at most every quarter second."""

    def __init__(self, states: dict[str, StepState], *, live: bool) -> None:
        self.states = states
        self.started = time.monotonic()
        self._last_log = self.started
        self._last_refresh = 0.0
        self._live: Any = None
        if live:
            from rich.live import Live

            self._live = Live(self._table(), refresh_per_second=4, transient=False, console=_console())
            self._live.start()

    def tick(self) -> None:
        now = time.monotonic()
        if self._live is not None:
            if now - self._last_refresh >= _REFRESH_EVERY:
                self._last_refresh = now
                self._live.update(self._table())
        elif now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            for row in summary_rows(self.states):
                logger.info(
                    "%s: %d rows out, %d batches (%d in flight, %d failed)",
                    row["step"], row["rows_out"], row["batches"], row["in_flight"], row["failed_batches"],
                )

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="stillhouse", expand=False)
        for column in ("step", "rows out", "rows/s", "in flight", "failed", "status"):
            table.add_column(column)
        for row in summary_rows(self.states):
            table.add_row(row["step"], str(row["rows_out"]), f"{row['rows_per_s']:.0f}",
                          str(row["in_flight"]), str(row["failed_batches"]), row["status"])
        return table


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def summary_rows(states: dict[str, StepState]) -> list[dict[str, Any]]:
    rows = []
    now = time.monotonic()
    for name, state in states.items():
        stats = state.stats
        began = stats.started_at
        elapsed = ((stats.ended_at or now) - began) if began else 0.0
        if state.mode == "skip":
            status = "cached"
        elif state.finished:
            status = "cached" if stats.batches and stats.cached_batches == stats.batches else "done"
        elif state.suspended:
            status = f"suspended ({len(state.suspended)})"
        else:
            status = "running" if state.started else "waiting"
        rows.append({
            "step": name,
            "rows_in": stats.rows_in,
            "rows_out": stats.rows_out,
            "batches": stats.batches,
            "cached_batches": stats.cached_batches,
            "failed_batches": stats.failed_batches,
            "in_flight": state.inflight,
            "seconds": round(elapsed, 3),
            "rows_per_s": stats.rows_out / elapsed if elapsed > 0 else 0.0,
            "status": status,
            "started_worker": state.started,
        })
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    header = f"{'step':<28} {'rows in':>9} {'rows out':>9} {'batches':>8} {'cached':>7} {'failed':>7} {'time s':>8}  status"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['step']:<28} {row['rows_in']:>9} {row['rows_out']:>9} {row['batches']:>8} "
            f"{row['cached_batches']:>7} {row['failed_batches']:>7} {row['seconds']:>8.2f}  {row['status']}"
        )
    return "\n".join(lines)
