"""stillhouse as a good citizen inside other programs (threads, spawn, logging, secrets)."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from pathlib import Path

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.engine.progress import progress_enabled
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.secret_steps import CallApi
from tests.support.steps import AlwaysFail, Double, Slow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = "sk-very-secret-value-123"


def small(tmp_path: Path, executor: str = "mp", name: str = "embed") -> Pipeline:
    with Pipeline(name=name, cache_dir=tmp_path, executor=executor) as pipeline:
        LoadDataFromDicts(data=[{"x": i} for i in range(20)], batch_size=6) >> Double(input_batch_size=4)
    return pipeline


def test_run_from_a_non_main_thread(tmp_path):
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["rows"] = rows_of(small(tmp_path).run(use_cache=False, progress=False))
        except BaseException as exc:  # pragma: no cover - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(90)
    assert "error" not in outcome, outcome.get("error")
    assert [r["y"] for r in outcome["rows"]] == [2 * i for i in range(20)]


def test_stop_from_another_thread_then_resume(tmp_path):
    with Pipeline(name="stoppable", cache_dir=tmp_path, executor="threaded") as pipeline:
        LoadDataFromDicts(data=[{"x": i} for i in range(40)], batch_size=5) >> Slow(sleep=0.1, input_batch_size=2)
    # The third batch waits until the other thread has stopped the run: a stop midway,
    # not on a timer that a loaded machine could outrun (stopping before any batch).
    step = pipeline.dag.get_step("slow_0")
    original, seen = step.process, {"batches": 0}
    held, stopped = threading.Event(), threading.Event()

    def held_on_the_third(*inputs):
        seen["batches"] += 1
        if seen["batches"] == 3:
            held.set()
            stopped.wait(60)
        yield from original(*inputs)

    object.__setattr__(step, "process", held_on_the_third)

    def stop_midway() -> None:
        held.wait(60)
        pipeline.stop()
        stopped.set()

    stopper = threading.Thread(target=stop_midway, daemon=True)
    stopper.start()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(progress=False)
    stopper.join(30)
    done = next(row for row in pipeline.last_run_summary if row["step"] == "slow_0")
    assert 0 < done["batches"] < 20
    rows = rows_of(pipeline.run(progress=False))
    assert [r["x"] for r in rows] == list(range(40))


def test_two_runs_in_one_process(tmp_path):
    first = rows_of(small(tmp_path, name="twice").run(use_cache=False, progress=False))
    second = rows_of(small(tmp_path, name="twice").run(use_cache=False, progress=False))
    assert first == second and len(first) == 20


def _run_in_spawned_child(cache_dir: str, queue) -> None:
    pipeline = small(Path(cache_dir), executor="mp", name="spawned")
    queue.put([r["y"] for r in rows_of(pipeline.run(use_cache=False, progress=False))])


def test_run_from_a_process_started_with_spawn(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_run_in_spawned_child, args=(str(tmp_path), queue))
    child.start()
    try:
        assert queue.get(timeout=90) == [2 * i for i in range(20)]
        child.join(30)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def test_library_never_touches_the_root_logger(tmp_path):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    with Pipeline(name="logs", cache_dir=tmp_path, executor="mp") as pipeline:
        LoadDataFromDicts(data=[{"x": 1}]) >> AlwaysFail(name="bad")
    pipeline.run(use_cache=False, progress=False, logging_handlers=[Collect()])
    assert root.handlers == handlers and root.level == level
    assert any("Run summary" in r.getMessage() for r in records)
    assert all(r.name.startswith("stillhouse") for r in records)
    log = Path(pipeline.run_dir) / "pipeline.log"
    text = log.read_text()
    assert "Step 'bad' failed on batch" in text  # a worker's line, in the driver's log file
    assert "Run summary" in text


def test_progress_is_off_when_asked_or_not_on_a_terminal(monkeypatch):
    monkeypatch.setenv("STILLHOUSE_PROGRESS", "0")
    assert progress_enabled(None) is False
    monkeypatch.delenv("STILLHOUSE_PROGRESS")
    assert progress_enabled(None) is False  # pytest captures stderr: not a TTY
    assert progress_enabled(True) is True


@pytest.mark.parametrize("executor", ["mp", "sync"])
def test_secrets_are_never_written_anywhere(tmp_path, executor):
    with Pipeline(name="secret", cache_dir=tmp_path / "cache", executor=executor) as pipeline:
        LoadDataFromDicts(data=[{"x": i} for i in range(5)]) >> CallApi(name="api", api_key=SECRET)
    rows = rows_of(pipeline.run(progress=False))
    assert rows[0]["answer"] == f"tiny:{len(SECRET)}"
    pipeline.save(tmp_path / "saved.yaml")
    assert SECRET not in str(pipeline.dump()) and SECRET not in repr(pipeline.dag.get_step("api"))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "pipeline.log" for p in written)
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), f"secret leaked into {path}"
    # resuming from the cache takes the secret from the live pipeline
    with Pipeline(name="secret", cache_dir=tmp_path / "cache", executor=executor) as again:
        LoadDataFromDicts(data=[{"x": i} for i in range(5)]) >> CallApi(name="api", api_key="other-key")
    assert rows_of(again.run(progress=False)) == rows
