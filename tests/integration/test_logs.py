"""What a user sees of a run: the live view on a terminal, pipeline.log, the resume
announcement and hint, and the run summary (issue 19)."""

from __future__ import annotations

import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stillhouse.core import GeneratorStep, Pipeline, Step, StepInput
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.steps import Slow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
ERASE_LINE = "\x1b[2K"


def _pty_run(cache: Path, *, sleep: float, interrupt_after: str | None = None) -> tuple[str, int]:
    """Run tests/support/progress_pipeline.py with a pseudo-terminal as stdout/stderr."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "140", "LINES": "40", "TERM": "xterm"}
    env.pop("STILLHOUSE_PROGRESS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.progress_pipeline", str(cache), str(sleep)],
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    interrupted = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
            text = b"".join(chunks).decode(errors="replace")
            if interrupt_after and not interrupted and interrupt_after in text:
                process.send_signal(signal.SIGINT)  # what Ctrl+C sends
                interrupted = True
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return b"".join(chunks).decode(errors="replace"), process.returncode


def test_live_view_on_a_terminal_then_one_summary(tmp_path):
    output, code = _pty_run(tmp_path / "cache", sleep=0.02)
    assert code == 0, output
    assert "RUN FINISHED" in output
    assert "pipeline 'ptydemo' · " in output and "elapsed" in output
    assert re.search(r"generate .*\d+/40", output)
    assert "rows/s" in output and "ETA" in output
    assert output.count("Run summary of pipeline 'ptydemo'") == 1
    summary = output[output.index("Run summary"):]
    assert "pipeline 'ptydemo' · " not in summary  # the live table is not drawn again
    before = output[: output.index("Run summary")]
    assert ERASE_LINE in before[before.rindex("pipeline 'ptydemo' · "):]  # and it was erased
    assert summary.count("rows in") == 1
    # Log lines written during the run erase the view first and it is drawn again below
    # them: never a log line right after a drawn table (a stale copy left on the screen).
    assert "INFO    stillhouse.engine: Step 'slow' replica 0 loaded" in before
    assert not re.search(r"┘(\r?\n)?\[\d{4}-", output)
    assert re.search(r"slow\s+40\s+40\s+40 .* computed", summary)


def test_ctrl_c_erases_the_live_view_and_summarises_once(tmp_path):
    output, code = _pty_run(tmp_path / "cache", sleep=1.0, interrupt_after="│ running")
    assert code != 0
    assert output.count("Run summary of pipeline 'ptydemo'") == 1
    summary = output[output.index("Run summary"):]
    assert "pipeline 'ptydemo' · " not in summary
    assert re.search(r"slow\s+.*interrupted", summary)
    assert "To resume from " in summary and "run the same pipeline again" in summary


# -- pipeline.log ---------------------------------------------------------------------


def _log(pipeline: Pipeline) -> str:
    return (Path(pipeline.run_dir) / "pipeline.log").read_text()


STOP_AFTER: dict[str, int] = {}
"""Armed by a test: `StopsTheRun` asks its pipeline to stop after that many batches
(a deterministic Ctrl+C: no timer that a loaded machine could outrun)."""


class StopsTheRun(Step):
    note: str = ""

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["slow"]

    def process(self, inputs: StepInput):
        left = STOP_AFTER.get("batches")
        if left is not None:
            STOP_AFTER["batches"] = left - 1
            if left <= 1:
                self.pipeline.stop()
                STOP_AFTER.clear()
        yield [{**row, "slow": row["x"]} for row in inputs]


def _pipeline(tmp_path: Path, note: str = "", name: str = "logs") -> Pipeline:
    """generate (30 rows, 10 batches) >> slow, on the sync executor (the run's own thread)."""
    with Pipeline(name=name, cache_dir=tmp_path, executor="sync") as pipeline:
        load = LoadDataFromDicts(name="generate", data=[{"x": i} for i in range(30)], batch_size=3)
        load >> StopsTheRun(name="slow", note=note, input_batch_size=3)
    return pipeline


def _stopped_run(tmp_path: Path, use_cache: bool = True) -> Pipeline:
    pipeline = _pipeline(tmp_path)
    STOP_AFTER["batches"] = 3
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.run(progress=False, use_cache=use_cache)
    finally:
        STOP_AFTER.clear()
    return pipeline


def test_ctrl_c_raises_keyboard_interrupt_from_the_callers_frame(tmp_path):
    import traceback

    pipeline = _pipeline(tmp_path)
    STOP_AFTER["batches"] = 3
    try:
        pipeline.run(progress=False)
    except KeyboardInterrupt as stopped:
        frames = traceback.extract_tb(stopped.__traceback__)
        context = stopped.__context__
    finally:
        STOP_AFTER.clear()
    assert [frame.name for frame in frames] == [
        "test_ctrl_c_raises_keyboard_interrupt_from_the_callers_frame", "run",
    ]
    assert frames[-1].filename.endswith("pipeline.py")
    assert context is None  # no "During handling of the above exception" engine traceback


def test_pipeline_log_has_loaded_and_finished_lines(tmp_path):
    pipeline = _pipeline(tmp_path)
    pipeline.run(progress=False)
    log = _log(pipeline)
    assert re.search(r"Step 'slow' replica 0 loaded in \d+\.\d\d s", log)
    assert re.search(
        r"Step 'slow' finished in \d+\.\d\d s: 30 rows in, 30 rows out \(30 computed\), "
        r"10 batches \(0 cached, 0 failed\); computed", log)
    assert "resuming:" not in log  # nothing was reused


def test_resume_is_announced_with_the_reasons(tmp_path):
    pipeline = _stopped_run(tmp_path)
    summary = {row["step"]: row["status"] for row in pipeline.last_run_summary}
    assert summary["slow"] == "interrupted"
    assert "To resume from " in _log(pipeline)

    again = _pipeline(tmp_path, note="edited")  # one field of slow changed
    again.run(progress=False)
    log = _log(again)
    assert "Pipeline 'logs' resumes from its cache:" in log
    # generate's batches are reused: whole if it had finished, else the stored ones.
    assert re.search(r"resuming: generate: (reuse, because finished with the same signature|"
                     r"resume \(\d+ batches stored\), because stored outputs are not finished)", log)
    assert "resuming: slow: recompute, because field 'note' changed" in log
    statuses = {row["step"]: row["status"] for row in again.last_run_summary}
    assert statuses["generate"] in {"cached", "partly cached"} and statuses["slow"] == "computed"


def test_statuses_partly_cached_and_cached(tmp_path):
    pipeline = _stopped_run(tmp_path)
    done = next(row for row in pipeline.last_run_summary if row["step"] == "slow")
    assert 0 < done["batches"] < 10

    again = _pipeline(tmp_path)
    again.run(progress=False)
    statuses = {row["step"]: row for row in again.last_run_summary}
    assert statuses["slow"]["status"] == "partly cached"
    assert statuses["slow"]["cached_batches"] == done["batches"]
    assert statuses["slow"]["computed_rows"] == 30 - 3 * done["batches"]
    assert f"resuming: slow: resume ({done['batches']} batches stored), because" in _log(again)

    third = _pipeline(tmp_path)
    third.run(progress=False)
    assert {row["status"] for row in third.last_run_summary} == {"cached"}


class Exploding(GeneratorStep):
    @property
    def outputs(self) -> list[str]:
        return ["x"]

    def process(self, offset: int = 0):
        raise RuntimeError("generator exploded")
        yield [], True


def test_failed_step_is_named_failed_and_hint_says_fix_it(tmp_path):
    with Pipeline(name="boom", cache_dir=tmp_path, executor="sync") as pipeline:
        Exploding(name="exploding") >> Slow(name="slow")
    with pytest.raises(Exception, match="generator exploded"):
        pipeline.run(progress=False)
    statuses = {row["step"]: row["status"] for row in pipeline.last_run_summary}
    assert statuses == {"exploding": "failed", "slow": "interrupted"}
    assert "fix what failed, then run the same pipeline again" in _log(pipeline)


def test_no_resume_hint_when_a_rerun_fails_the_same_way(tmp_path):
    from stillhouse.core.engine.run import resume_hint
    from stillhouse.core.errors import (
        MisalignedInputsError,
        PipelineValidationError,
        StepContractError,
    )

    run_dir = str(tmp_path)
    assert resume_hint(PipelineValidationError("bad"), True, run_dir) is None
    assert resume_hint(MisalignedInputsError("unequal"), True, run_dir) is None
    assert resume_hint(StepContractError("yielded a dict"), True, run_dir) is None
    spawned = RuntimeError("... needs `if __name__ == '__main__':` ...")
    assert resume_hint(spawned, True, run_dir) is None
    assert "use_cache=True (on the CLI: without --ignore-cache)" in resume_hint(KeyboardInterrupt(), False, run_dir)
    assert "run the same pipeline again" in resume_hint(KeyboardInterrupt(), True, run_dir)


@pytest.mark.parametrize("executor", ["sync", "threaded", "mp"])
def test_a_step_breaking_its_contract_fails_the_run_naming_it_without_a_resume_hint(tmp_path, executor, caplog):
    from stillhouse.core.errors import StepContractError
    from tests.support.steps import ForgetsItsOutput

    with Pipeline(name=f"contract-{executor}", cache_dir=tmp_path, executor=executor) as pipeline:
        LoadDataFromDicts(name="load", data=[{"x": 1}]) >> ForgetsItsOutput(name="forgets")
    with pytest.raises(StepContractError, match="Step 'forgets' did not set its output column 'y'"):
        pipeline.run(progress=False)
    assert "To resume" not in caplog.text



# -- users' own loggers inside steps ---------------------------------------------------


@pytest.mark.parametrize("executor", ["sync", "threaded", "mp", "ray"])
def test_a_steps_own_logger_reaches_pipeline_log_tagged(tmp_path, executor):
    from tests.support.logging_steps import Chatty

    user_logger = logging.getLogger("user_steps")
    user_logger.setLevel(logging.INFO)  # the user's level decides, on every executor
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogRecordFactory())
    try:
        with Pipeline(name=f"chatty-{executor}", cache_dir=tmp_path, executor=executor) as pipeline:
            load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(4)], batch_size=2)
            load >> Chatty(name="chatty", input_batch_size=2, resources={"replicas": 2})
        pipeline.run(progress=False)
    finally:
        user_logger.setLevel(logging.NOTSET)
    after = (list(root.handlers), root.level, logging.getLogRecordFactory())
    if executor == "ray":  # ray.init() installs its own record factory (over ours, which it calls)
        after, before = after[:2], before[:2]
    assert after == before
    log = _log(pipeline)
    info = re.findall(r"INFO    user_steps: \[chatty r([01])\] info from a step: 2 rows", log)
    warning = re.findall(r"WARNING user_steps: \[chatty r([01])\] warning from a step: first x=", log)
    assert len(info) == 2 and len(warning) == 2, log
    if executor != "sync":  # sync runs one copy, whatever replicas says
        assert set(info) <= {"0", "1"}
    assert "user_steps" not in log.split("Run summary")[1]


def test_step_records_outside_a_run_and_outside_steps_are_left_alone(tmp_path, caplog):
    pipeline = _pipeline(tmp_path)
    pipeline.run(progress=False)
    logging.getLogger("user_steps").warning("after the run")
    assert "after the run" not in _log(pipeline)
    assert "after the run" in caplog.text  # the user's own configuration still gets it


SCRIPT = """
import logging, sys
from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.logging_steps import Chatty

if __name__ == "__main__":
    with Pipeline(name="console", cache_dir=sys.argv[1], executor="mp") as pipeline:
        LoadDataFromDicts(data=[{"x": 7}]) >> Chatty(name="chatty")
    pipeline.run(progress=False)
    print("RUN DIR", pipeline.run_dir)
"""


def test_without_logging_configured_a_steps_warning_reaches_the_console(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STILLHOUSE_PROGRESS": "0"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "warning from a step: first x=7" in done.stderr
    run_dir = Path(done.stdout.split("RUN DIR ")[1].strip())
    log = (run_dir / "pipeline.log").read_text()
    assert "WARNING user_steps: [chatty r0] warning from a step: first x=7" in log
    assert "info from a step" not in log  # INFO is below the unconfigured root's WARNING


def test_no_resume_hint_after_a_validation_error(tmp_path, caplog):
    from stillhouse.core.errors import PipelineValidationError

    with Pipeline(name="invalid", cache_dir=tmp_path, executor="sync") as pipeline:
        LoadDataFromDicts(data=[{"y": 1}]) >> Slow(name="slow")  # needs column x
    with pytest.raises(PipelineValidationError):
        pipeline.run(progress=False)
    assert "resume" not in caplog.text.lower()


def test_ignore_cache_run_that_stops_names_use_cache_true(tmp_path):
    pipeline = _stopped_run(tmp_path, use_cache=False)
    assert "run it again with use_cache=True (on the CLI: without --ignore-cache)" in _log(pipeline)


NO_GUARD = """
import sys
from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.logging_steps import Chatty

with Pipeline(name="noguard", cache_dir=sys.argv[1], executor="mp") as pipeline:
    LoadDataFromDicts(data=[{"x": 1}]) >> Chatty(name="chatty")
pipeline.run(progress=False)  # no `if __name__ == "__main__":` guard
"""


def test_no_resume_hint_when_spawn_meets_a_script_without_main_guard(tmp_path):
    script = tmp_path / "noguard.py"
    script.write_text(NO_GUARD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STILLHOUSE_PROGRESS": "0",
           "STILLHOUSE_START_METHOD": "spawn"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "cache")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "if __name__ == '__main__'" in done.stderr  # the error says what to fix
    assert "did not finish" not in done.stderr and "To resume" not in done.stderr


def test_under_mp_a_thread_the_step_starts_is_tagged_with_its_step(tmp_path):
    from tests.support.logging_steps import ThreadChatty

    with Pipeline(name="threads", cache_dir=tmp_path, executor="mp") as pipeline:
        LoadDataFromDicts(data=[{"x": 1}]) >> ThreadChatty(name="spawner")
    pipeline.run(progress=False)
    assert "WARNING user_steps: [spawner r0] from a thread the step started" in _log(pipeline)


def test_a_record_factory_wrapped_during_a_run_does_not_repeat_records_in_later_runs(tmp_path):
    from tests.support.logging_steps import Chatty

    def chatty(name: str) -> Pipeline:
        with Pipeline(name=name, cache_dir=tmp_path, executor="sync") as pipeline:
            LoadDataFromDicts(name="load", data=[{"x": 1}]) >> Chatty(name="chatty")
        return pipeline

    class Wrapping:  # what another library does during a run (ray.init wraps the factory)
        def __init__(self) -> None:
            self.inner = logging.getLogRecordFactory()

        def __call__(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    original = logging.getLogRecordFactory()
    first = chatty("first")
    first.run(progress=False, logging_handlers=[_WrapOnFirstRecord(Wrapping)])
    try:
        second = chatty("second")
        second.run(progress=False)
        assert len(re.findall(r"warning from a step", _log(second))) == 1
    finally:
        logging.setLogRecordFactory(original)


class _WrapOnFirstRecord(logging.Handler):
    """A handler that, the first time it sees a record, wraps the current record factory."""

    def __init__(self, wrapper: type) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.done = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.done:
            self.done = True
            logging.setLogRecordFactory(self.wrapper())
