"""`Pipeline.run()`: validate, open the store and writer, run the scheduler, clean up."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stillhouse.core import limits, lookups, plugins
from stillhouse.core.dag import iter_ancestors
from stillhouse.core.engine import logs
from stillhouse.core.engine.context import RunContext
from stillhouse.core.engine.guards import OwnedWriter
from stillhouse.core.engine.progress import Progress, format_summary, progress_enabled, summary_rows
from stillhouse.core.engine.protocol import (
    BatchStorage,
    MemoryOutputWriter,
    NullRunStore,
    OutputWriter,
    RunStore,
)
from stillhouse.core.engine.scheduler import STOP_GRACE, Scheduler
from stillhouse.core.engine.state import StepState, build_states
from stillhouse.core.errors import (
    MisalignedInputsError,
    MissingPluginError,
    PipelineValidationError,
    StepContractError,
    StepsSuspendedError,
)
from stillhouse.core.secrets import secret_values

if TYPE_CHECKING:
    from stillhouse.core.pipeline import Pipeline

logger = logging.getLogger("stillhouse.pipeline")
_LOG_FORMAT = "[%(asctime)s] %(levelname)-7s %(name)s: %(message)s"
_FILE_FORMAT = "[%(asctime)s] %(levelname)-7s %(name)s: %(stillhouse_tag)s%(message)s"


def fresh_steps(pipeline: Pipeline, use_cache: bool) -> set[str]:
    """Steps whose stored outputs must not be reused, and everything after them."""
    dag = pipeline.dag
    if not use_cache:
        return set(dag.step_names)
    fresh = {name for name in dag.step_names if not dag.get_step(name).use_cache}
    for name in dag.step_names:
        if iter_ancestors(dag, [name]) & fresh:
            fresh.add(name)
    return fresh


def run_pipeline(
    pipeline: Pipeline,
    *,
    parameters: dict[str, dict[str, Any]] | None = None,
    use_cache: bool = True,
    load_groups: Any = None,
    logging_handlers: list[logging.Handler] | None = None,
    progress: bool | None = None,
    dry_run_rows: int | None = None,
    storage_parameters: dict[str, Any] | None = None,
    use_fs_to_pass_data: bool = False,
    wait_for_suspended: bool = False,
    retry_failed: bool = False,
) -> Any:
    pipeline.apply_parameters(parameters)
    with lookups.one_lookup_each():  # validation and the signatures see the same data
        plan = pipeline.validate(load_groups)
        executor_cls = plugins.executor_class(pipeline.executor)
        pipeline._stop_requested = 0
        context = RunContext(
            pipeline_name=pipeline.name,
            pipeline=pipeline,
            dag=pipeline.dag,
            plan=plan,
            executor=pipeline.executor,
            executor_options=dict(pipeline.executor_options),
            cache_dir=str(pipeline.cache_dir),
            use_cache=use_cache,
            fresh_steps=frozenset(fresh_steps(pipeline, use_cache)),
            enable_metadata=pipeline.enable_metadata,
            storage_parameters=storage_parameters,
            use_fs_to_pass_data=use_fs_to_pass_data,
        )
        store = _make_run_store(context, dry_run=dry_run_rows is not None)
    context = context.replace(
        run_dir=str(store.run_dir) if store.run_dir is not None else None,
        data_dir=store.data_dir(),
        log_file=store.log_file(),
    )
    pipeline._run_context = context  # `pipeline.run_dir`, `pipeline.run_context`
    _set_artifacts_path(context)
    completed = False
    try:
        secrets = logs.environment_secrets().union(*(secret_values(pipeline.dag.get_step(n)) for n in plan.order))
        with _run_logging(context.log_file, logging_handlers, secrets), limits.serve_limits():
            writer = OwnedWriter(_make_writer(context), store.check_owned)
            stores = {
                name: store.step_store(name, getattr(pipeline.dag.get_step(name), "input_batch_size", None))
                for name in plan.order
            }
            for name, step_store in stores.items():  # before any worker gets the step
                pipeline.dag.get_step(name)._cache_path = step_store.durable_dir()
                pipeline.dag.get_step(name)._lasting_path = step_store.lasting_dir()
            states = build_states(plan, pipeline.dag, stores, writer, retry_failed=retry_failed and use_cache)
            _announce_resume(pipeline, states)
            error: BaseException | None = None
            view: Progress | None = None
            storage: BatchStorage | None = None
            stop_requested = _StopHoldsSlots(pipeline)
            try:
                view = Progress(states, live=progress_enabled(progress), pipeline_name=pipeline.name)
                executor = executor_cls(**pipeline.executor_options)
                storage = _batch_storage(context, executor_cls)
                context = context.replace(batch_storage=storage)
                pipeline._run_context = context
                scheduler = Scheduler(
                    context,
                    states,
                    executor,
                    writer,
                    stop_requested=stop_requested,
                    on_tick=view.tick,
                    dry_run_rows=dry_run_rows,
                    wait_for_suspended=wait_for_suspended,
                )
                with _signal_handlers(pipeline):
                    _drive(scheduler, executor, pipeline)
                completed = True
            except BaseException as exc:
                error = exc
                raise
            finally:
                stop_requested.release()  # the workers are gone: nothing of this run can send
                if view is not None:
                    view.close()
                if storage is not None:
                    storage.cleanup()  # a failed global step's inputs, empty folders
                writer.flush()
                rows = summary_rows(states, failed_step=getattr(error, "step_name", None))
                pipeline.last_run_summary = rows
                store.save_progress({"completed": completed, "steps": rows})
                logger.info("Run summary of pipeline %r:\n%s", pipeline.name, format_summary(rows))
                hint = resume_hint(error, use_cache, context.run_dir) if not completed else None
                if hint:
                    logger.warning("%s", hint)
            store.sync()  # pipeline.log and checkpoints are where the results point to
            result = writer.result()
            if hasattr(result, "run_summary"):
                result.run_summary = pipeline.last_run_summary  # shown on the dataset card
            return result
    finally:
        store.sync()
        store.close(completed=completed)


class _StopHoldsSlots:
    """The scheduler's `stop_requested`. The first time the run is asked to stop, the
    shared limits stop granting slots (`limits.hold_slots`): a remote call of a batch in
    flight that was not sent yet is not sent, since its batch may be given up at the end of
    the grace, and an answer nobody stores would be paid for again on resume. `release()`
    lifts that once the workers are gone (overlapping runs share the limits)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._release: Callable[[], None] | None = None

    def __call__(self) -> int:
        asked = self.pipeline._stop_requested
        if asked and self._release is None:
            self._release = limits.hold_slots()
        return asked

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def _make_run_store(context: RunContext, *, dry_run: bool) -> RunStore:
    """The run store a plugin makes for this run (nothing is kept for a dry run)."""
    if dry_run:
        return NullRunStore()
    return plugins.first_result("make_run_store", context=context) or NullRunStore()


def _set_artifacts_path(context: RunContext) -> None:
    """Tell every step where `save_artifact` writes: `<run dir>/artifacts` (what
    `create_distiset` picks up), or nowhere for a dry run or a remote cache."""
    artifacts = Path(str(context.run_dir)) / "artifacts" if context.is_local else None
    for name in context.plan.order:
        context.dag.get_step(name).set_pipeline_artifacts_path(artifacts)


_NO_RESUME = (StepContractError, MisalignedInputsError)
"""Errors a rerun meets again whatever the cache holds: the step's code must change."""


def resume_hint(error: BaseException | None, use_cache: bool, run_dir: str | None) -> str | None:
    """The "run again to resume" line, only when a rerun would resume, or None.

    Not after a validation or step-contract error, nor when a spawned worker re-ran
    the script (no `if __name__ == "__main__":` guard): the same rerun fails the same
    way. After `use_cache=False` (`--ignore-cache`) the same call would start over, so
    the hint names the change: `use_cache=True` (drop `--ignore-cache`)."""
    if run_dir is None or error is None:
        return None
    if isinstance(error, (PipelineValidationError, *_NO_RESUME)):
        return None
    text = f"{error} {error.__cause__ or ''}"
    if "bootstrapping phase" in text or "if __name__ == '__main__'" in text:
        return None  # a spawned worker re-ran the script: the guard is missing
    how = ("run the same pipeline again" if use_cache else
           "run it again with use_cache=True (on the CLI: without --ignore-cache)")
    nothing_to_fix = isinstance(error, KeyboardInterrupt | StepsSuspendedError)
    first = "" if nothing_to_fix else "fix what failed, then "
    return (f"The run did not finish. To resume from {run_dir}, {first}{how}; "
            "finished batches are reused.")


def _announce_resume(pipeline: Pipeline, states: dict[str, StepState]) -> None:
    """One "resuming: ..." line per step when the run reuses anything stored."""
    notes = {}
    for name, state in states.items():
        note = state.store.reuse_note
        if state.retry == "failed":
            note = ("resume", "run(retry_failed=True): its stored batches that recorded a failure run again")
        elif state.retry == "all":
            note = ("recompute", "run(retry_failed=True): a step before it runs failed batches again")
        elif note is None and state.mode in ("skip", "source"):
            note = ("reuse", "finished with the same signature")
        notes[name] = note
    if not any(note and note[0].startswith(("reuse", "resume")) for note in notes.values()):
        return
    logger.info("Pipeline %r resumes from its cache:", pipeline.name)
    for name, note in notes.items():
        decision, why = note or ("compute", "no cache decision recorded")
        logger.info("resuming: %s: %s, because %s", name, decision, why)


def _drive(scheduler: Scheduler, executor: Any, pipeline: Pipeline) -> None:
    try:
        scheduler.run()
    except KeyboardInterrupt:
        try:
            executor.shutdown(force=pipeline._stop_requested > 1 or scheduler.gave_up_on_stop)
        except KeyboardInterrupt:  # Ctrl+C again while workers unload: kill them
            executor.shutdown(force=True)
        raise
    except StepsSuspendedError:  # nothing is in flight: let the workers unload
        executor.shutdown()
        raise
    except BaseException:
        executor.shutdown(force=True)
        raise
    executor.shutdown()


def _batch_storage(context: RunContext, executor_cls: Any) -> BatchStorage | None:
    """Where batch data goes through a filesystem; refused when workers cannot see it."""
    storage = plugins.first_result("make_batch_storage", context=context)
    if storage is None:
        if context.use_fs_to_pass_data or context.storage_parameters:
            raise MissingPluginError(
                "use_fs_to_pass_data/storage_parameters need stillhouse-cache. Install it "
                "(`pip install stillhouse-cache`)."
            )
        return None
    if not storage.shared_between_processes and not getattr(executor_cls, "in_process", False):
        raise PipelineValidationError(
            f"storage_parameters path {storage.url!r} is only visible inside this process, but "
            f"executor {context.executor!r} runs steps in other processes. Use a path every "
            "worker can reach (a local folder, s3://...) or the 'threaded'/'sync' executor."
        )
    return storage


def _make_writer(context: RunContext) -> OutputWriter:
    return plugins.first_result("make_output_writer", context=context) or MemoryOutputWriter()


_STOP_DEADLINE = STOP_GRACE + 1.0
"""Seconds after the first Ctrl+C by which the run must have stopped (its workers too),
or it is interrupted as by a second one: a step busy in the thread that drives the run
(the "sync" executor), or an async step's loop it blocked, would otherwise hold it."""


@contextlib.contextmanager
def _signal_handlers(pipeline: Pipeline) -> Iterator[None]:
    """First Ctrl+C asks for a graceful stop; the second interrupts at once, and so does
    `_STOP_DEADLINE` after the first when the run has not stopped by then.

    Python only allows handlers in the main thread; elsewhere `pipeline.stop()` stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main = threading.get_ident()
    deadline: list[threading.Timer] = []

    def interrupt() -> None:
        logger.warning("The run did not stop within %.0f s of Ctrl+C (a step is busy where it "
                       "cannot be told to stop): interrupting it as a second Ctrl+C would. "
                       "Batches not stored are recomputed on resume.", _STOP_DEADLINE)
        signal.pthread_kill(main, signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        pipeline._stop_requested += 1
        if pipeline._stop_requested > 1:
            raise KeyboardInterrupt
        if not deadline:
            deadline.append(threading.Timer(_STOP_DEADLINE, interrupt))
            deadline[0].daemon = True
            deadline[0].start()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        for timer in deadline:
            timer.cancel()
        signal.signal(signal.SIGINT, previous)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is now, not what it was when made: while the live
    view is drawn, rich puts a proxy there that prints log lines above the view instead
    of through it (which would leave copies of the view on the screen)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


@contextlib.contextmanager
def _run_logging(
    log_file: Path | None, handlers: list[logging.Handler] | None, secrets: set[str] | frozenset[str] = frozenset()
) -> Iterator[None]:
    """Send stillhouse's log records, and those of users' steps (tagged with step and
    replica, see `logs.py`), to pipeline.log and the user's handlers for this run.
    In pipeline.log and on our console, `secrets` and credential headers are masked.

    Only the "stillhouse" logger is touched; the root logger and its handlers never are."""
    library_logger = logging.getLogger("stillhouse")
    added: list[logging.Handler] = list(handlers or [])
    if log_file is not None:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logs.StepFormatter(_FILE_FORMAT, secrets=secrets))
        added.append(file_handler)
    step_sinks = list(added)  # not the console below: steps' records reach it their own way
    if not library_logger.handlers and not logging.getLogger().handlers and not handlers:
        console = _StderrHandler()  # nobody configured logging: still show progress lines
        console.setFormatter(logs.StepFormatter(_LOG_FORMAT, secrets=secrets))
        added.append(console)
    previous_level = library_logger.level
    if library_logger.level == logging.NOTSET or library_logger.level > logging.INFO:
        library_logger.setLevel(logging.INFO)
    for handler in added:
        library_logger.addHandler(handler)
    try:
        with logs.routed_to(step_sinks):
            yield
    finally:
        for handler in added:
            library_logger.removeHandler(handler)
            if handler not in (handlers or []):
                handler.close()
        library_logger.setLevel(previous_level)
