"""`Pipeline.run()`: validate, open the store and writer, run the scheduler, clean up."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stillhouse.core import limits, plugins
from stillhouse.core.dag import iter_ancestors, load_stages
from stillhouse.core.engine.progress import Progress, format_summary, progress_enabled, summary_rows
from stillhouse.core.engine.protocol import (
    BatchStorage,
    MemoryOutputWriter,
    NullRunStore,
    OutputWriter,
    RunStore,
)
from stillhouse.core.engine.scheduler import Scheduler
from stillhouse.core.engine.state import build_states
from stillhouse.core.errors import MissingPluginError, PipelineValidationError, StepsSuspendedError

if TYPE_CHECKING:
    from stillhouse.core.pipeline import Pipeline

logger = logging.getLogger("stillhouse.pipeline")
_LOG_FORMAT = "[%(asctime)s] %(levelname)-7s %(name)s: %(message)s"


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
) -> Any:
    pipeline.apply_parameters(parameters)
    pipeline.validate()
    executor_cls = plugins.executor_class(pipeline.executor)
    stages = load_stages(pipeline.dag, load_groups)
    pipeline._stop_requested = 0
    pipeline._storage = {"parameters": storage_parameters, "use_fs_to_pass_data": use_fs_to_pass_data}
    if dry_run_rows is not None:
        store: RunStore = NullRunStore()
    else:
        made = plugins.first_result(
            "stillhouse_make_run_store",
            pipeline=pipeline,
            use_cache=use_cache,
            fresh_steps=fresh_steps(pipeline, use_cache),
        )
        store = made or NullRunStore()
    pipeline._run_dir = str(store.run_dir) if store.run_dir is not None else None
    completed = False
    try:
        with _run_logging(store.log_file(), logging_handlers), limits.serve_limits():
            writer = _make_writer(pipeline, store)
            stores = {
                name: store.step_store(name, getattr(pipeline.dag.get_step(name), "input_batch_size", None))
                for name in pipeline.dag.topological_order()
            }
            for name, step_store in stores.items():  # before any worker gets the step
                pipeline.dag.get_step(name)._cache_path = step_store.durable_dir()
            states = build_states(pipeline.dag, stores, writer)
            view = Progress(states, live=progress_enabled(progress))
            executor = executor_cls(**pipeline.executor_options)
            storage = _batch_storage(pipeline, executor_cls, storage_parameters, use_fs_to_pass_data)
            scheduler = Scheduler(
                pipeline.dag,
                states,
                stages,
                executor,
                writer,
                enable_metadata=pipeline.enable_metadata,
                stop_requested=lambda: pipeline._stop_requested,
                on_tick=view.tick,
                dry_run_rows=dry_run_rows,
                batch_storage=storage,
                use_fs_to_pass_data=use_fs_to_pass_data,
                wait_for_suspended=wait_for_suspended,
            )
            try:
                with _signal_handlers(pipeline):
                    _drive(scheduler, executor, pipeline)
                completed = True
            finally:
                view.close()
                writer.flush()
                rows = summary_rows(states)
                pipeline.last_run_summary = rows
                store.save_progress({"completed": completed, "steps": rows})
                logger.info("Run summary of pipeline %r:\n%s", pipeline.name, format_summary(rows))
                if not completed and pipeline._run_dir:
                    logger.warning(
                        "The run did not finish. Run the same pipeline again with use_cache=True "
                        "to resume from %s.", pipeline._run_dir,
                    )
            store.sync()  # pipeline.log and checkpoints are where the results point to
            result = writer.result()
            if hasattr(result, "run_summary"):
                result.run_summary = pipeline.last_run_summary  # shown on the dataset card
            return result
    finally:
        store.sync()
        store.close(completed=completed)


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


def _batch_storage(
    pipeline: Pipeline, executor_cls: Any, parameters: dict[str, Any] | None, use_fs: bool
) -> BatchStorage | None:
    """Where batch data goes through a filesystem; refused when workers cannot see it."""
    storage = plugins.first_result(
        "stillhouse_make_batch_storage", pipeline=pipeline, storage_parameters=parameters
    )
    if storage is None:
        if use_fs or parameters:
            raise MissingPluginError(
                "use_fs_to_pass_data/storage_parameters need stillhouse-cache. Install it "
                "(`pip install stillhouse-cache`)."
            )
        return None
    if not storage.shared_between_processes and not getattr(executor_cls, "in_process", False):
        raise PipelineValidationError(
            f"storage_parameters path {storage.url!r} is only visible inside this process, but "
            f"executor {pipeline.executor!r} runs steps in other processes. Use a path every "
            "worker can reach (a local folder, s3://...) or the 'threaded'/'sync' executor."
        )
    return storage


def _make_writer(pipeline: Pipeline, store: RunStore) -> OutputWriter:
    made = plugins.first_result("stillhouse_make_output_writer", pipeline=pipeline, data_dir=store.data_dir())
    return made or MemoryOutputWriter()


@contextlib.contextmanager
def _signal_handlers(pipeline: Pipeline) -> Iterator[None]:
    """First Ctrl+C asks for a graceful stop; the second interrupts at once.

    Python only allows handlers in the main thread; elsewhere `pipeline.stop()` stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        pipeline._stop_requested += 1
        if pipeline._stop_requested > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _run_logging(log_file: Path | None, handlers: list[logging.Handler] | None) -> Iterator[None]:
    """Send stillhouse's log records to pipeline.log and the user's handlers for this run.

    Only the "stillhouse" logger is touched; the root logger and its handlers never are."""
    library_logger = logging.getLogger("stillhouse")
    added: list[logging.Handler] = list(handlers or [])
    if log_file is not None:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        added.append(file_handler)
    if not library_logger.handlers and not logging.getLogger().handlers and not handlers:
        console = logging.StreamHandler()  # nobody configured logging: still show progress lines
        console.setFormatter(logging.Formatter(_LOG_FORMAT))
        added.append(console)
    previous_level = library_logger.level
    if library_logger.level == logging.NOTSET or library_logger.level > logging.INFO:
        library_logger.setLevel(logging.INFO)
    for handler in added:
        library_logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in added:
            library_logger.removeHandler(handler)
            if handler not in (handlers or []):
                handler.close()
        library_logger.setLevel(previous_level)
