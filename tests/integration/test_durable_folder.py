"""`Step.cache_path`: a folder in the step's store that outlives stops and kills.

Also runnable as a script (`python -m tests.integration.test_durable_folder CACHE_DIR
EXECUTOR`): the SIGKILL test runs the pipeline that way and kills it mid-run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stillhouse.core import Pipeline, Step, StepInput, StepOutput
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROWS, BATCH = 24, 3
HOLD_ENV = "STILLHOUSE_TEST_HOLD_AT"
"""Set for the run that gets killed: the step blocks after writing this batch's file."""


class Remember(Step):
    """Writes one file per batch into its durable folder; outputs what it found there."""

    tag: str = "a"

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["files_before", "durable"]

    def process(self, inputs: StepInput) -> StepOutput:
        folder = self.cache_path
        first = inputs[0]["x"]
        before = -1
        if folder is not None:
            before = len(list(folder.iterdir()))
            (folder / f"batch-{first:04d}").write_text(self.tag, encoding="utf-8")
        if os.environ.get(HOLD_ENV) == str(first):
            time.sleep(600)  # killed here by the test
        for row in inputs:
            row["files_before"] = before
            row["durable"] = str(folder)
        yield inputs


def build(cache_dir: str | Path, executor: str, tag: str = "a") -> Pipeline:
    with Pipeline(name="durable", cache_dir=str(cache_dir), executor=executor) as pipeline:
        data = LoadDataFromDicts(data=[{"x": i} for i in range(ROWS)], batch_size=BATCH)
        data >> Remember(name="remember", tag=tag, input_batch_size=BATCH)
    return pipeline


def run(cache_dir: str | Path, executor: str = "threaded", **kwargs) -> list[dict]:
    return rows_of(build(cache_dir, executor, **kwargs).run(progress=False))


def durable_files(folder: str | Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def test_cache_path_is_a_folder_inside_the_step_store(tmp_path):
    rows = run(tmp_path)
    folder = Path(rows[0]["durable"])
    assert folder.is_dir() and folder.is_relative_to(tmp_path / "durable" / "steps")
    assert {r["durable"] for r in rows} == {str(folder)}
    assert len(durable_files(folder)) == ROWS // BATCH
    # The one replica saw the files of the batches before it, in order.
    assert [r["files_before"] for r in rows[::BATCH]] == list(range(ROWS // BATCH))


def test_a_stopped_run_finds_its_files_when_resumed(tmp_path):
    pipeline = build(tmp_path, "threaded")
    step = pipeline.dag.get_step("remember")
    original = step.process
    seen = {"batches": 0}

    def stop_after_two(*inputs):
        seen["batches"] += 1
        if seen["batches"] == 2:
            pipeline.stop()
        yield from original(*inputs)

    object.__setattr__(step, "process", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(progress=False)
    folder = step.cache_path
    written = durable_files(folder)
    assert 2 <= len(written) < ROWS // BATCH

    rows = run(tmp_path)
    assert [r["x"] for r in rows] == list(range(ROWS))
    assert {r["durable"] for r in rows} == {str(folder)}
    resumed = [r for r in rows if f"batch-{r['x'] - r['x'] % BATCH:04d}" not in written]
    assert resumed and all(r["files_before"] >= len(written) for r in resumed)


def test_a_changed_signature_gets_an_empty_folder(tmp_path):
    first = run(tmp_path, tag="a")
    second = run(tmp_path, tag="b")
    assert first[0]["durable"] != second[0]["durable"]
    assert second[0]["files_before"] == 0
    assert {Path(second[0]["durable"], name).read_text() for name in durable_files(second[0]["durable"])} == {"b"}


def test_use_cache_false_empties_the_folder(tmp_path):
    first = run(tmp_path)
    again = rows_of(build(tmp_path, "threaded").run(use_cache=False, progress=False))
    assert again[0]["durable"] == first[0]["durable"]
    assert again[0]["files_before"] == 0


def test_dry_run_has_no_folder(tmp_path):
    pipeline = build(tmp_path, "threaded")
    rows = rows_of(pipeline.dry_run())
    assert rows[0]["durable"] == "None" and rows[0]["files_before"] == -1
    assert pipeline.dag.get_step("remember").cache_path is None


def test_a_remote_cache_gives_a_local_folder_per_store_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_REMOTE_DURABLE_DIR", str(tmp_path / "local"))
    cache = f"memory://durable-{os.getpid()}-{time.monotonic_ns()}"
    first = run(cache)
    folder = Path(first[0]["durable"])
    assert folder.is_dir() and folder.is_relative_to(tmp_path / "local")
    assert len(durable_files(folder)) == ROWS // BATCH
    fresh = rows_of(build(cache, "threaded").run(use_cache=False, progress=False))
    assert fresh[0]["files_before"] == 0
    assert not folder.exists(), "the folder of the discarded store generation is left behind"


class Lasting(Step):
    """Counts the files in its lasting folder (`<name>_before`), then adds one per batch."""

    tag: str = "a"

    @property
    def outputs(self) -> list[str]:
        return [f"{self.name}_before", f"{self.name}_folder"]

    def process(self, inputs: StepInput) -> StepOutput:
        folder = self.lasting_path
        before = len(list(folder.iterdir())) if folder is not None else -1
        if folder is not None:
            (folder / f"{self.tag}-{inputs[0]['x']:04d}").write_text(self.tag, encoding="utf-8")
        yield [{**row, f"{self.name}_before": before, f"{self.name}_folder": str(folder)} for row in inputs]


def _lasting_run(cache_dir: Path, executor: str = "threaded", use_cache: bool = True, rows: int = ROWS,
                 first_use_cache: bool = True, tag: str = "a") -> list[dict]:
    with Pipeline(name="lasting", cache_dir=str(cache_dir), executor=executor) as pipeline:
        data = LoadDataFromDicts(data=[{"x": i} for i in range(rows)], batch_size=BATCH)
        first = Lasting(name="first", input_batch_size=BATCH, tag=tag, use_cache=first_use_cache)
        data >> first >> Lasting(name="after", input_batch_size=BATCH)
    return rows_of(pipeline.run(progress=False, use_cache=use_cache))


@pytest.mark.parametrize("executor", ["threaded", "mp"])
def test_the_lasting_folder_outlives_a_changed_signature(tmp_path, executor):
    """`Step.lasting_path`: one folder per step name, kept when the step or a step before it
    changes; emptied only when the run or the step itself says use_cache=False."""
    batches = ROWS // BATCH
    first = _lasting_run(tmp_path, executor)
    folder = Path(first[0]["first_folder"])
    assert folder.is_dir() and folder == tmp_path / "lasting" / "lasting" / "first"
    edited = _lasting_run(tmp_path, executor, tag="b")  # a new signature, recomputed
    assert edited[0]["first_folder"] == str(folder) and edited[0]["first_before"] == batches
    assert len(list(folder.iterdir())) == 2 * batches  # "a-*" and "b-*"
    assert edited[0]["after_before"] == batches  # a step after it: recomputed, folder kept
    more = _lasting_run(tmp_path, executor, rows=ROWS + BATCH, tag="b")  # more rows upstream
    assert {r["first_folder"] for r in more} == {str(folder)}
    assert len(list(folder.iterdir())) == 2 * batches + 1
    again = _lasting_run(tmp_path, executor, rows=ROWS + BATCH, tag="b", use_cache=False)
    assert again[0]["first_before"] == 0 and again[0]["after_before"] == 0  # run(use_cache=False)


def test_a_steps_own_use_cache_false_empties_its_lasting_folder_not_the_next_ones(tmp_path):
    _lasting_run(tmp_path)
    rows = _lasting_run(tmp_path, first_use_cache=False)
    assert rows[0]["first_before"] == 0  # started over
    assert rows[0]["after_before"] == ROWS // BATCH  # recomputed after it, but kept its folder


def test_a_remote_cache_gives_a_local_lasting_folder_kept_across_signatures(tmp_path, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_REMOTE_DURABLE_DIR", str(tmp_path / "local"))
    cache = f"memory://lasting-{os.getpid()}-{time.monotonic_ns()}"
    folder = Path(_lasting_run(cache)[0]["first_folder"])
    assert folder.is_dir() and folder.is_relative_to(tmp_path / "local" / "lasting")
    assert _lasting_run(cache, tag="b")[0]["first_before"] == ROWS // BATCH


def test_the_folder_survives_sigkill_of_the_driver_on_mp(tmp_path):
    hold = 3 * BATCH  # the fourth batch blocks until the driver is killed
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STILLHOUSE_PROGRESS": "0", HOLD_ENV: str(hold)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.test_durable_folder", str(tmp_path), "mp"],
        cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        marker = f"batch-{hold:04d}"
        deadline = time.monotonic() + 90
        while not list(tmp_path.glob(f"durable/steps/remember-*/durable/{marker}")):
            assert process.poll() is None, f"the run ended early: {process.stderr.read()}"
            assert time.monotonic() < deadline, "the held batch never started"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        process.stderr.close()
        wait_for_group_to_end(process.pid)  # its workers hold the cache lock until gone
    (folder,) = tmp_path.glob("durable/steps/remember-*/durable")
    written = durable_files(folder)
    assert marker in written

    rows = run(tmp_path, "mp")
    assert [r["x"] for r in rows] == list(range(ROWS))
    assert {r["durable"] for r in rows} == {str(folder)}
    assert set(written) <= set(durable_files(folder))
    after_kill = [r for r in rows if r["x"] >= hold]  # computed by the second run
    assert all(r["files_before"] >= len(written) for r in after_kill)


def wait_for_group_to_end(pgid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"process group {pgid} outlived SIGKILL"
        time.sleep(0.05)


if __name__ == "__main__":
    # By module name, so the step class (and the signature) is the test's own.
    from tests.integration.test_durable_folder import build as build_by_name

    build_by_name(sys.argv[1], sys.argv[2]).run(use_cache=True, progress=False)
