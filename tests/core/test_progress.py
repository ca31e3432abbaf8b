"""The live view and the plain progress lines, rendered from real run state (issue 19)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from rich.console import Console

from stillhouse.core import Pipeline, StepInput, sample_n_steps, step
from stillhouse.core.engine import Event, Finished, RunContext, Task
from stillhouse.core.engine.progress import (
    PROGRESS_INTERVAL_ENV,
    Progress,
    expected_rows,
    progress_line,
    render,
    step_figures,
    summary_rows,
)
from stillhouse.core.engine.protocol import MemoryOutputWriter, NullRunStore, NullStepStore
from stillhouse.core.engine.scheduler import Scheduler
from stillhouse.core.engine.state import StepStatus, build_states
from stillhouse.core.steps import LoadDataFromDicts
from tests.core.test_scheduler import Reversing


@step(inputs=["x"], outputs=["y"])
def Square(inputs: StepInput):
    yield [{**row, "y": row["x"] ** 2} for row in inputs]


@step(inputs=["y"], outputs=["z"], step_type="global")
def Everything(inputs: StepInput):
    yield inputs


def _states(rows: int = 300):
    with Pipeline(name="demo") as pipeline:
        load = LoadDataFromDicts(name="generate", data=[{"x": i} for i in range(rows)], batch_size=30)
        load >> Square(name="square", input_batch_size=10) >> Everything(name="judge")
    stores = {name: NullRunStore().step_store(name) for name in pipeline.dag.topological_order()}
    return build_states(pipeline.validate(), pipeline.dag, stores, MemoryOutputWriter())


def _midway(states, now: float):
    """generate: 120 of 300 rows, 60 of them replayed from the cache; square: 40 computed in 4 s."""
    generate, square = states["generate"], states["square"]
    generate.move(StepStatus.RUNNING)
    square.move(StepStatus.RUNNING)
    generate.stats.started_at = square.stats.started_at = now - 4.0
    generate.stats.rows_out, generate.stats.batches = 120, 4
    generate.stats.cached_batches, generate.stats.computed_rows = 2, 60
    square.stats.rows_in, square.stats.batches, square.stats.computed_rows = 60, 4, 40
    square.stats.rows_done = 40  # the rows in of its 4 released batches; 20 more in flight
    square.stats.rows_out, square.inflight = 40, 2


def _screen(renderable) -> str:
    console = Console(record=True, force_terminal=True, width=120, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_totals_come_from_a_sized_generator_and_flow_downstream():
    states = _states()
    assert expected_rows(states) == {"generate": 300, "square": 300, "judge": 300}


def test_live_view_has_title_bars_totals_percent_rate_and_eta():
    states, now = _states(), time.monotonic()
    _midway(states, now)
    screen = _screen(render(states, "demo", 83.0, now=now))
    lines = screen.splitlines()
    assert lines[0].strip() == "pipeline 'demo' · 1:23 elapsed"
    generate = next(line for line in lines if "generate" in line)
    square = next(line for line in lines if "square" in line)
    judge = next(line for line in lines if "judge" in line)
    assert "120/300" in generate and "40%" in generate
    # 60 rows computed in 4 s: the 60 cached rows do not count (they would make it 30/s).
    assert " 15.0 " in generate and "0:12" in generate  # 180 rows left at 15 rows/s
    assert "40/300" in square and "13%" in square and " 10.0 " in square and "0:26" in square
    assert "━" in generate  # a drawn bar
    assert "0/300" in judge and "waiting" in judge


def test_unknown_totals_show_a_question_mark(tmp_path):
    with Pipeline(name="unsized") as pipeline:
        @step(outputs=["x"], step_type="generator")
        def Endless(offset: int = 0):
            yield [{"x": 1}], True

        Endless(name="endless") >> Square(name="square")
    stores = {name: NullRunStore().step_store(name) for name in pipeline.dag.topological_order()}
    states = build_states(pipeline.validate(), pipeline.dag, stores, MemoryOutputWriter())
    states["endless"].stats.rows_out = 7
    rows = {row["step"]: row for row in step_figures(states)}
    assert rows["endless"]["total"] is None and rows["endless"]["percent"] is None
    assert "7/? rows (-)" in progress_line(rows["endless"])
    assert "7/?" in _screen(render(states, "unsized", 1.0))


class _Stored(NullStepStore):
    """A finished store that knows how many rows it holds (or cannot say: None)."""

    finished = True

    def __init__(self, rows: int | None) -> None:
        self.rows = rows

    def stored_rows(self) -> int | None:
        return self.rows


class _Complete(MemoryOutputWriter):
    def is_complete(self, leaf: str, version: str = "") -> bool:
        return True


def test_a_step_taken_whole_from_the_cache_shows_its_stored_rows():
    """Nothing needs the rows of a finished step whose leaf is complete: it releases no
    batch in the run, and its figures are what its store holds."""
    with Pipeline(name="stored") as pipeline:
        LoadDataFromDicts(name="generate", data=[{"x": i} for i in range(300)], batch_size=30) >> Square(name="square")
    stores = {"generate": _Stored(300), "square": _Stored(None)}
    states = build_states(pipeline.validate(), pipeline.dag, stores, _Complete())
    assert {name: state.mode for name, state in states.items()} == {"generate": "skip", "square": "skip"}
    for state in states.values():
        state.move(StepStatus.SKIPPED)
    rows = {row["step"]: row for row in summary_rows(states)}
    assert {k: rows["generate"][k] for k in ("rows_out", "computed_rows", "batches", "status")} == {
        "rows_out": 300, "computed_rows": 0, "batches": 0, "status": "cached"}
    assert (rows["square"]["rows_out"], rows["square"]["status"]) == (0, "cached")  # its store cannot say


def test_plain_lines_carry_the_same_figures(monkeypatch, caplog):
    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "0")
    states, now = _states(), time.monotonic()
    _midway(states, now)
    view = Progress(states, live=False, pipeline_name="demo")
    with caplog.at_level(logging.INFO, logger="stillhouse.progress"):
        view.tick()  # the interval is 0: every tick logs a line per step
        assert len(caplog.records) == 3
        caplog.clear()
        view.log_lines(now=now)
    lines = [r.getMessage() for r in caplog.records if r.name == "stillhouse.progress"]
    assert len(lines) == 3
    generate = next(line for line in lines if "generate:" in line)
    assert generate.startswith("progress 0:00: generate: 120/300 rows (40%), 15.0 rows/s, ETA 0:12, ")
    assert generate.endswith("0 in flight, 0 failed batches, running")


@pytest.mark.parametrize("interrupted", [False, True])
def test_closing_the_live_view_twice_is_harmless(interrupted):
    """Ctrl+C while closing must not draw it again (the erasing itself is tested through a
    pseudo-terminal in tests/integration/test_logs.py)."""
    console = Console(record=True, force_terminal=True, width=120, color_system=None)
    states = _states()
    view = Progress(states, live=True, pipeline_name="demo", console=console)
    try:
        _midway(states, time.monotonic())
        view.tick()
        if interrupted:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    finally:
        view.close()
        view.close()  # closing twice (Ctrl+C during close) draws nothing more
    text = console.export_text(clear=False)
    assert text.count("pipeline 'demo'") >= 1
    assert not console.is_terminal or view._live is None


def test_the_capture_in_the_docs_is_the_current_view():
    docs = Path(__file__).resolve().parents[2] / "docs" / "concepts.md"
    text = docs.read_text(encoding="utf-8")
    start = text.index("```text\npipeline 'demo'") + len("```text\n")
    documented = text[start:text.index("```", start)].rstrip("\n").splitlines()
    states, now = _states(), time.monotonic()
    _midway(states, now)
    console = Console(record=True, force_terminal=False, width=110, color_system=None)
    console.print(render(states, "demo", 83.0, now=now))
    rendered = [line.rstrip() for line in console.export_text().rstrip("\n").splitlines()]
    assert documented == rendered


@step(inputs=["x"], outputs=[])
def DropAll(inputs: StepInput):
    yield []


@step(inputs=["x"], outputs=["k"])
def Triple(inputs: StepInput):
    yield [{**row, "k": k} for row in inputs for k in range(3)]


def _shaped_states():
    """generate (300 rows) >> [drop (keeps no row), triple (3 rows per row) >> square]."""
    with Pipeline(name="shapes") as pipeline:
        load = LoadDataFromDicts(name="generate", data=[{"x": i} for i in range(300)], batch_size=30)
        load >> DropAll(name="drop", input_batch_size=10)
        load >> Triple(name="triple", input_batch_size=10) >> Square(name="square", input_batch_size=10)
    stores = {name: NullRunStore().step_store(name) for name in pipeline.dag.topological_order()}
    return build_states(pipeline.validate(), pipeline.dag, stores, MemoryOutputWriter())


def _line(screen: str, step_name: str) -> str:
    return next(line for line in screen.splitlines() if f" {step_name} " in line)


def test_rate_and_eta_count_input_rows_for_a_filter_and_an_expander():
    """Both consumed 40 of their 300 input rows in 4 s: 10 rows/s and 26 s left, whatever
    they yielded (the filter none, the expander 120)."""
    states, now = _shaped_states(), time.monotonic()
    states["generate"].move(StepStatus.FINISHED)
    states["generate"].stats.rows_out = 300
    for name, rows_out in (("drop", 0), ("triple", 120)):
        state = states[name]
        state.move(StepStatus.RUNNING)
        state.stats.started_at = now - 4.0
        state.stats.rows_in, state.stats.batches, state.stats.rows_done = 60, 4, 40
        state.stats.rows_out = state.stats.computed_rows = rows_out
    rows = {row["step"]: row for row in step_figures(states, now=now)}
    for name in ("drop", "triple"):
        assert (rows[name]["done"], rows[name]["total"]) == (40, 300)
        assert rows[name]["rows_per_s"] == pytest.approx(10.0)
        assert rows[name]["eta_s"] == pytest.approx(26.0)
        assert progress_line(rows[name]).startswith(f"{name}: 40/300 rows (13%), 10.0 rows/s, ETA 0:26, ")

    # Batches replayed from the cache do not count: 2 of triple's 4 were cached.
    states["triple"].stats.cached_batches, states["triple"].stats.computed_rows = 2, 60
    triple = next(row for row in step_figures(states, now=now) if row["step"] == "triple")
    assert triple["rows_per_s"] == pytest.approx(5.0) and triple["eta_s"] == pytest.approx(52.0)


def test_a_step_after_an_unfinished_expander_never_shows_false_completion():
    states, now = _shaped_states(), time.monotonic()
    states["generate"].move(StepStatus.FINISHED)
    states["generate"].stats.rows_out = 300
    triple, square = states["triple"], states["square"]
    for state in (triple, square):
        state.move(StepStatus.RUNNING)
        state.stats.started_at = now - 10.0
    # triple has consumed 100 of its 300 rows (300 out); square has done those 300 rows,
    # the pass-through estimate of its total, and has 600 more to come.
    triple.stats.rows_in, triple.stats.batches, triple.stats.rows_out = 100, 10, 300
    triple.stats.rows_done = 100
    triple.stats.computed_rows = 300
    square.stats.rows_in = square.stats.rows_done = 300
    square.stats.batches = 30
    square.stats.rows_out = square.stats.computed_rows = 300
    row = next(row for row in step_figures(states, now=now) if row["step"] == "square")
    assert (row["done"], row["total"], row["percent"], row["eta_s"]) == (300, None, None, None)
    assert progress_line(row).startswith("square: 300/? rows (-), 30.0 rows/s, ETA -, ")
    line = _line(_screen(render(states, "shapes", 10.0, now=now)), "square")
    assert "300/?" in line and "100%" not in line and "0:00" not in line

    # Below the estimate the estimate is shown (too small, it is only known later).
    square.stats.rows_in, square.stats.batches, square.stats.rows_done = 200, 20, 200
    row = next(row for row in step_figures(states, now=now) if row["step"] == "square")
    assert (row["done"], row["total"]) == (200, 300)

    # Once triple finished, square's total is known: exact, and no longer a question mark.
    triple.stats.rows_in, triple.stats.batches, triple.stats.rows_out = 300, 30, 900
    triple.move(StepStatus.FINISHED)
    square.stats.rows_in, square.stats.batches, square.stats.rows_done = 300, 30, 300
    row = next(row for row in step_figures(states, now=now) if row["step"] == "square")
    assert (row["done"], row["total"], round(row["percent"])) == (300, 900, 33)


def test_an_unfinished_step_that_did_all_its_rows_is_not_shown_complete():
    """Its last batch is released but the step has not finished: 99%, a bar short of full,
    no ETA; 100% and a full bar once it finished."""
    states, now = _states(), time.monotonic()
    generate, square = states["generate"], states["square"]
    generate.move(StepStatus.FINISHED)
    generate.stats.rows_out = 300
    square.move(StepStatus.RUNNING)
    square.stats.started_at = now - 10.0
    square.stats.rows_in, square.stats.batches, square.stats.rows_done = 300, 30, 300
    square.stats.rows_out = square.stats.computed_rows = 300
    row = next(row for row in step_figures(states, now=now) if row["step"] == "square")
    assert (row["done"], row["total"], row["percent"], row["eta_s"]) == (300, 300, 99.0, None)
    line = _line(_screen(render(states, "demo", 10.0, now=now)), "square")
    assert "99%" in line and "100%" not in line and "0:00" not in line and "━" * 20 not in line
    square.move(StepStatus.FINISHED)
    line = _line(_screen(render(states, "demo", 10.0, now=now)), "square")
    assert "100%" in line and "━" * 20 in line


def test_records_for_a_users_basic_config_handler_print_above_the_live_view(monkeypatch):
    """`logging.basicConfig()` made a handler holding the stderr of that moment: while the
    live view is drawn, a record reaches the terminal through the view's console (above
    the view), never straight through that stream, which would tear the view."""
    import io

    terminal = io.StringIO()
    monkeypatch.setattr("sys.stderr", io.StringIO())  # what the user's handler holds
    users = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(users)
    console = Console(file=terminal, force_terminal=True, width=120, color_system=None)
    try:
        view = Progress(_states(), live=True, pipeline_name="demo", console=console)
        logging.getLogger("stillhouse.cache").warning("the cache warned while drawing")
        view.close()
        assert "the cache warned while drawing" in terminal.getvalue()
        assert users.stream.getvalue() == ""
        assert users.stream is sys.stderr  # given back when the view closed
        logging.getLogger("stillhouse.cache").warning("after the view")
        assert users.stream.getvalue().endswith("after the view\n")
    finally:
        root.removeHandler(users)


class AnswersOneAtATime(Reversing):
    """Runs every task at once, except those of step `slow`: it holds them and answers
    one per `events()` call, first noting what the progress view shows for that step
    (`seen`: (rows done shown, input rows of the batches answered so far))."""

    name: ClassVar[str] = "answers-one-at-a-time"

    def __init__(self, slow: str, states: dict, **options: Any) -> None:
        super().__init__(**options)
        self.slow, self.states = slow, states
        self.answered_rows = 0
        self.seen: list[tuple[int, int]] = []

    def send(self, task: Task) -> None:
        if task.step_name == self.slow:
            self.held.append(task)
        else:
            self.pending.append(Finished(self.runners[task.step_name].run(task)))

    def events(self, timeout: float) -> list[Event]:
        events, self.pending = self.pending, []
        if not events and self.held:
            figures = {row["step"]: row for row in step_figures(self.states)}
            self.seen.append((figures[self.slow]["done"], self.answered_rows))
            task = self.held.pop(0)
            self.answered_rows += len(task.inputs[0])
            events.append(Finished(self.runners[task.step_name].run(task)))
        return events


def test_a_routed_branch_counts_only_the_rows_of_released_batches():
    """Batches of a routed branch are smaller than its input_batch_size (one per routed
    upstream batch of 5 rows here, against 10): rows in flight are not done."""
    with Pipeline(name="routed") as pipeline:
        load = LoadDataFromDicts(name="generate", data=[{"x": i} for i in range(60)], batch_size=5)
        load >> sample_n_steps(1) >> [Square(name="a", input_batch_size=10), Square(name="b", input_batch_size=10)]
    plan = pipeline.validate()
    stores = {name: NullRunStore().step_store(name) for name in pipeline.dag.topological_order()}
    writer = MemoryOutputWriter()
    states = build_states(plan, pipeline.dag, stores, writer)
    executor = AnswersOneAtATime("a", states)
    context = RunContext(pipeline_name="routed", pipeline=pipeline, dag=pipeline.dag, plan=plan)
    Scheduler(context, states, executor, writer).run()
    assert len(executor.seen) >= 3 and executor.seen[0] == (0, 0)
    assert all(shown == answered for shown, answered in executor.seen), executor.seen
    assert states["a"].stats.rows_done == states["a"].stats.rows_in == executor.answered_rows
