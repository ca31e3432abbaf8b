"""What a user sees while a run goes: a live view on a terminal, periodic log lines
otherwise, and one summary table at the end.

Every figure comes from `step_figures`, so the live view, the log lines and the
summary never disagree. A step's rows done, total, rate and ETA share one unit: the
input rows it consumed (a generator: the rows it produced), so a filter or an expander
shows its real pace. Rates count only rows computed in this run: rows replayed from
the cache arrive at disk speed and would make a slow step look fast. Nothing here
changes what runs; the scheduler calls `Progress.tick()` and forgets it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any

from stillhouse.core.engine.state import StepState

logger = logging.getLogger("stillhouse.progress")

PROGRESS_ENV = "STILLHOUSE_PROGRESS"
"""`0`/`false`/`off` turns the live view off even on a terminal (CI logs, notebooks)."""

PROGRESS_INTERVAL_ENV = "STILLHOUSE_PROGRESS_INTERVAL"
"""Seconds between the plain progress lines written when stderr is not a terminal."""

_LOG_EVERY = 30.0  # a line per step every 30 s keeps a day-long run's log readable
_REFRESH_EVERY = 0.25  # the live view redraws at most 4 times a second


def progress_enabled(requested: bool | None) -> bool:
    if requested is not None:
        return requested
    if os.environ.get(PROGRESS_ENV, "").lower() in {"0", "false", "no", "off"}:
        return False
    return sys.stderr.isatty()


def _log_every() -> float:
    try:
        return float(os.environ.get(PROGRESS_INTERVAL_ENV) or _LOG_EVERY)
    except ValueError:
        return _LOG_EVERY


# -- the figures ---------------------------------------------------------------------


def expected_rows(states: dict[str, StepState]) -> dict[str, int | None]:
    """Per step, the rows it will consume (a generator: produce), where that is known."""
    return {name: total for name, (total, _sure) in _totals(states).items()}


def _totals(states: dict[str, StepState]) -> dict[str, tuple[int | None, bool]]:
    """Per step, `(total, sure)`: the rows it will consume (a generator, or a finished
    step replayed from the cache: produce), and whether that count is certain.

    Known for generators with `total_rows()` (LoadDataFromDicts), for replays (the rows
    their store holds), and for steps after them outside routed branches. A normal step
    is taken to pass its rows through until it finishes, then its real output count is
    used: totals after an unfinished normal step are estimates (`sure` False), too large
    after a filter, too small after an expander. A global step, a routed branch or a
    join of unequal inputs has no known total until its inputs end."""
    out: dict[str, tuple[int | None, bool]] = {}  # the rows each step gives
    totals: dict[str, tuple[int | None, bool]] = {}
    for name, state in states.items():  # states are in topological order
        step, stats = state.step, state.stats
        stored = state.store.stored_rows() if state.mode == "source" else None
        if step.is_generator:
            size = getattr(step, "total_rows", None)
            total, sure = (size() if callable(size) else None), True
        elif stored is not None:
            total, sure = stored, True
        else:
            given = [out[p] for p in state.preds]
            counts = {count for count, _ in given}
            single = len(counts) == 1 and not state.lineaged
            total, sure = (counts.pop(), all(s for _, s in given)) if single else (None, True)
        totals[name] = (None if total is None else max(total, 0), sure)
        if state.finished:
            out[name] = (stats.rows_out, True)
        elif step.is_global:
            out[name] = (None, True)
        elif step.is_generator or stored is not None:
            out[name] = (total, sure)
        else:
            out[name] = (total, False)  # rows passing through: an estimate
    return totals


def _done(state: StepState) -> int:
    """Rows finished: a generator's (or a replay's) output; otherwise the inputs of
    released batches."""
    stats = state.stats
    if state.step.is_generator or state.mode == "source":
        return stats.rows_out
    if state.finished:
        return stats.rows_in
    if state.step.is_global:
        return 0
    return stats.rows_done


def _computed(state: StepState, done: int) -> int:
    """The rows of `done` that this run computed (not replayed from the cache), in the
    unit of `done`. A normal step's cached batches are not told apart from its computed
    ones by size: its released batches are taken to be of equal size."""
    stats = state.stats
    if state.step.is_generator or state.mode == "source":
        return stats.computed_rows
    if not stats.batches:
        return 0
    computed_batches = max(stats.batches - stats.cached_batches, 0)
    return done * computed_batches // stats.batches


_UNFINISHED_PERCENT = 99.0
"""The most an unfinished step shows: 100% (and a full bar) only once it has finished."""


def _status(state: StepState, ended: bool, failed_step: str | None) -> str:
    stats = state.stats
    if state.mode == "skip" or state.finished:
        if state.mode in ("skip", "source") or (stats.batches and stats.cached_batches == stats.batches):
            status = "cached"
        else:
            status = "partly cached" if stats.cached_batches else "computed"
        return f"{status}, {stats.failed_batches} failed batches" if stats.failed_batches else status
    suspended = getattr(state, "suspended", None)  # async steps waiting on an external job
    if suspended:
        return f"suspended ({len(suspended)})"
    if state.name == failed_step:
        return "failed"
    if ended:
        return "interrupted" if state.had_workers or stats.batches else "not started"
    return "running" if state.had_workers or stats.batches else "waiting"


def step_figures(
    states: dict[str, StepState],
    *,
    ended: bool = False,
    failed_step: str | None = None,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """One dict per step with every figure the views and the summary show (rates as of
    `now`, a `time.monotonic()` value, default: this instant)."""
    now = time.monotonic() if now is None else now
    totals = _totals(states)
    rows = []
    for name, state in states.items():
        stats = state.stats
        began = stats.started_at
        elapsed = ((stats.ended_at or now) - began) if began else 0.0
        total, sure = totals[name]
        done = _done(state)
        if total is not None and not sure and not state.finished and done >= total:
            total = None  # it reached an estimate and goes on: its total is not known yet
        done = min(done, total) if total is not None else done
        computed = _computed(state, done)
        rate = computed / elapsed if elapsed > 0 and computed else 0.0
        left = None if total is None or state.finished else total - done
        if state.finished:
            percent: float | None = 100.0
        else:
            percent = min(100.0 * done / total, _UNFINISHED_PERCENT) if total else None
        rows.append({
            "step": name,
            "rows_in": stats.rows_in,
            "rows_out": stats.rows_out,
            "computed_rows": stats.computed_rows,
            "done": done,
            "total": total,
            "percent": percent,
            "batches": stats.batches,
            "cached_batches": stats.cached_batches,
            "failed_batches": stats.failed_batches,
            "in_flight": state.inflight,
            "seconds": round(elapsed, 3),
            "rows_per_s": rate,
            "eta_s": left / rate if left and rate > 0 else None,
            "status": _status(state, ended, failed_step),
            "started_worker": state.had_workers,
        })
    return rows


def summary_rows(
    states: dict[str, StepState], *, ended: bool = True, failed_step: str | None = None
) -> list[dict[str, Any]]:
    """The figures of a run that ended (kept as `pipeline.last_run_summary`)."""
    return step_figures(states, ended=ended, failed_step=failed_step)


def _clock(seconds: float | None) -> str:
    if seconds is None or math.isinf(seconds):
        return "-"
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _count(row: dict[str, Any]) -> str:
    total = row["total"]
    return f"{row['done']}/{total}" if total is not None else f"{row['done']}/?"


def _percent(row: dict[str, Any]) -> str:
    return "-" if row["percent"] is None else f"{row['percent']:.0f}%"


def progress_line(row: dict[str, Any]) -> str:
    """The plain line logged per step when there is no terminal (docs/concepts.md)."""
    return (
        f"{row['step']}: {_count(row)} rows ({_percent(row)}), {row['rows_per_s']:.1f} rows/s, "
        f"ETA {_clock(row['eta_s'])}, {row['in_flight']} in flight, "
        f"{row['failed_batches']} failed batches, {row['status']}"
    )


def title(pipeline_name: str, elapsed: float) -> str:
    return f"pipeline {pipeline_name!r} · {_clock(elapsed)} elapsed"


def render(
    states: dict[str, StepState], pipeline_name: str, elapsed: float, now: float | None = None
) -> Any:
    """The live view: a rich table with a bar, done/total, %, rows/s and ETA per step."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    view = Table(title=title(pipeline_name, elapsed), title_justify="left", expand=False)
    for column, justify in (("step", "left"), ("progress", "left"), ("rows", "right"),
                            ("%", "right"), ("rows/s", "right"), ("ETA", "right"),
                            ("in flight", "right"), ("failed", "right"), ("status", "left")):
        view.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in step_figures(states, now=now):
        percent = row["percent"]  # full only once the step has finished
        bar = ProgressBar(total=None if percent is None else 100.0, completed=percent or 0.0, width=20)
        view.add_row(row["step"], bar, _count(row), _percent(row), f"{row['rows_per_s']:.1f}",
                     _clock(row["eta_s"]), str(row["in_flight"]), str(row["failed_batches"]),
                     row["status"])
    return view


class Progress:
    """Calls are cheap: the view redraws at most every quarter second.

    The live view is transient: it is erased when the run ends (or is interrupted),
    and the summary table is then logged once, so nothing is drawn twice."""

    def __init__(
        self,
        states: dict[str, StepState],
        *,
        live: bool,
        pipeline_name: str = "pipeline",
        console: Any = None,
    ) -> None:
        self.states = states
        self.pipeline_name = pipeline_name
        self.started = time.monotonic()
        self._last_log = self.started
        self._last_refresh = 0.0
        self._log_every = _log_every()
        self._reported: set[str] = set()
        self._live: Any = None
        self._moved: list[tuple[logging.StreamHandler[Any], Any]] = []
        if live:
            from rich.live import Live

            self._live = Live(self._view(), auto_refresh=False, transient=True,
                              console=console or _console(), redirect_stdout=False)
            stderr = sys.stderr
            self._live.start(refresh=True)
            self._moved = _move_console_handlers(stderr, sys.stderr)

    def tick(self) -> None:
        now = time.monotonic()
        self._report_finished()
        if self._live is not None:
            if now - self._last_refresh >= _REFRESH_EVERY:
                self._last_refresh = now
                self._live.update(self._view(), refresh=True)
        elif now - self._last_log >= self._log_every:
            self._last_log = now
            self.log_lines()

    def log_lines(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        elapsed = _clock(now - self.started)
        for row in step_figures(self.states, now=now):
            logger.info("progress %s: %s", elapsed, progress_line(row))

    def close(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            for handler, stream in self._moved:
                handler.setStream(stream)
            self._moved = []
            live.stop()
        self._report_finished()

    def _report_finished(self) -> None:
        """One pipeline.log line per step that finished work in this run."""
        done = [n for n, s in self.states.items()
                if s.finished and n not in self._reported and (s.had_workers or s.stats.batches)]
        if not done:
            return
        self._reported.update(done)
        for row in (r for r in step_figures(self.states, ended=True) if r["step"] in done):
            logger.info(
                "Step %r finished in %.2f s: %d rows in, %d rows out (%d computed), %d batches "
                "(%d cached, %d failed); %s",
                row["step"], row["seconds"], row["rows_in"], row["rows_out"], row["computed_rows"],
                row["batches"], row["cached_batches"], row["failed_batches"], row["status"],
            )

    def _view(self) -> Any:
        return render(self.states, self.pipeline_name, time.monotonic() - self.started)


def _move_console_handlers(stderr: Any, proxy: Any) -> list[tuple[logging.StreamHandler[Any], Any]]:
    """Point the handlers that write our log records to `stderr` (the user's, from
    `logging.basicConfig()` say: they hold the stream they were made with) at `proxy`,
    which prints above the live view, until it closes: written straight to the
    terminal, a line would tear the view and leave copies of it. Returns each moved
    handler with the stream to give back."""
    if proxy is stderr:  # not a terminal rich redirects
        return []
    moved = []
    log: logging.Logger | None = logging.getLogger("stillhouse")
    while log is not None:
        for handler in log.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is stderr:
                moved.append((handler, handler.setStream(proxy)))
        log = log.parent if log.propagate else None
    return moved


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


_SUMMARY_COLUMNS = (
    ("step", "step", "<", 24), ("rows in", "rows_in", ">", 8), ("rows out", "rows_out", ">", 8),
    ("computed", "computed_rows", ">", 8), ("batches", "batches", ">", 7),
    ("cached", "cached_batches", ">", 6), ("failed", "failed_batches", ">", 6),
    ("time s", "seconds", ">", 7),
)


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The end-of-run table (pipeline.log and the console): one line per step."""
    width = max([24, *(len(row["step"]) for row in rows)])
    header = " ".join(
        f"{label:{align}{width if key == 'step' else size}}" for label, key, align, size in _SUMMARY_COLUMNS
    ) + "  status"
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for _label, key, align, size in _SUMMARY_COLUMNS:
            value = row[key]
            text = f"{value:.2f}" if key == "seconds" else str(value)
            cells.append(f"{text:{align}{width if key == 'step' else size}}")
        lines.append(" ".join(cells) + f"  {row['status']}")
    return "\n".join(lines)
