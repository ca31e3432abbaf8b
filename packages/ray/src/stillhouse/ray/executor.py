"""The "ray" executor: one Ray actor per step replica, on this machine or a cluster.

Data path: `send()` queues a task in the driver, and it goes to the least-loaded
replica of its step that has loaded and has room (`PER_ACTOR_TASKS`) as a call to
the actor's `run`; `events()` waits on every pending ObjectRef with `ray.wait` and
turns what came back into events. An actor whose process died makes its refs
raise `RayActorError`, which becomes `Died`. Scheduling belongs to
the engine; connecting and placement checks to `_runtime.py`; the actor to
`_actor.py`. `ray` is imported only when a run starts, so merely having this
plugin installed costs other executors nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from stillhouse.core.engine import (
    Died,
    Event,
    Executor,
    Failed,
    FatalStepError,
    Loaded,
    RunContext,
    StepRunner,
    Task,
    failed_event,
    log_levels,
    reemit,
)
from stillhouse.core.errors import EngineError, StepRuntimeError
from stillhouse.core.step import BaseStep

logger = logging.getLogger("stillhouse.ray")

DEFAULT_JOIN_TIMEOUT = 30.0
"""Seconds a graceful stop waits for replicas to unload before killing them: time for a
model to free its GPU, but a stuck `unload()` cannot hang the run."""

PER_ACTOR_TASKS = 2
"""Tasks queued on one actor at once. One running and one waiting hides the round trip
to the driver; more would let one replica hoard batches that a free one could take (the
rest wait in the driver, as they would in a shared queue under "mp")."""

@dataclass(eq=False)
class _Actor:
    step_name: str
    replica: int
    handle: Any
    loaded: bool = False
    dead: bool = False
    inflight: int = 0


class RayExecutor(Executor):
    """Runs each replica of a step as a Ray actor.

    Options:
        ray_head_node_url: Address of an existing cluster (`"ray://host:10001"`,
            `"host:6379"`, or `"auto"` for one started with `ray start` on this
            machine). Default: RAY_ADDRESS, else the job's cluster inside a Ray job,
            else a new local runtime.
        ray_init_kwargs: More keyword arguments for `ray.init` (e.g. `runtime_env`).
        num_cpus: CPUs of the local runtime (default: all of this machine's).
        join_timeout: Seconds to wait for replicas to unload when stopping (default 30).
        check_resources: Refuse, before creating actors, steps whose resources no live
            node has (default True; turn off for a cluster whose autoscaler adds nodes).

    A runtime this executor started is shut down by `shutdown()`; one that was already
    initialised in this process (see `start_local_runtime`) is left running.
    """

    name: ClassVar[str] = "ray"
    known_options: ClassVar[tuple[str, ...]] = (
        "ray_head_node_url", "ray_init_kwargs", "num_cpus", "join_timeout", "check_resources",
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._join_timeout = float(options.get("join_timeout", DEFAULT_JOIN_TIMEOUT))
        self._owns_runtime = False
        self._connected = False
        self._actor_class: Any = None
        self._actors: dict[str, list[_Actor]] = {}
        self._pending: dict[Any, tuple[_Actor, str]] = {}  # ObjectRef -> (actor, "load"/"run")
        self._backlog: dict[str, deque[Task]] = {}  # tasks waiting for a replica with room
        self._per_actor: dict[str, int] = {}  # tasks one replica of the step may hold

    # -- the Executor interface ---------------------------------------------------------

    def start(self, steps: Sequence[BaseStep], context: RunContext) -> None:
        enable_metadata = context.enable_metadata
        from stillhouse.ray import _runtime
        from stillhouse.ray._actor import RAY_LOGGERS, driver_process

        for step in steps:
            if step.name in self._actors:
                raise EngineError(f"Step {step.name!r} was started twice without being stopped.")
        self._connect()
        nodes = _runtime.alive_nodes()
        _runtime.check_storage(steps, context, len(nodes))
        if self.options.get("check_resources", True):
            _runtime.check_resources(steps, nodes)
        options = {step.name: _runtime.actor_options(step) for step in steps}  # may raise
        for step in steps:
            concurrency = StepRunner(step).concurrency
            self._per_actor[step.name] = max(PER_ACTOR_TASKS, concurrency)
            if concurrency > 1:  # async: a threaded actor, `concurrency` calls at once
                options[step.name]["max_concurrency"] = concurrency + 1
        levels = log_levels(skip=RAY_LOGGERS)
        for step in steps:
            actors = self._actors[step.name] = []
            self._backlog[step.name] = deque()
            for index in range(step.resources.replicas):
                try:
                    with warnings.catch_warnings():  # Ray's report on a step that does not
                        # pickle reads pydantic's deprecated attributes (`__fields__`, ...):
                        # noise, or an error where warnings are errors, in place of the cause
                        warnings.simplefilter("ignore", DeprecationWarning)
                        handle = self._actor_class.options(**options[step.name]).remote(
                            step, index, enable_metadata, levels, driver_process()
                        )
                except TypeError as exc:  # Ray pickles the step here, in the driver
                    raise StepRuntimeError(
                        f"Step {step.name!r} could not be sent to a Ray actor: "
                        f"{(str(exc).strip().splitlines() or [''])[0][:300]} Steps are pickled to their "
                        "workers: define the step class or `@step` function at module level "
                        "of a module every node can import, and keep its fields picklable "
                        "(a lock, a client or an open file belongs in `load()`).",
                        step_name=step.name,
                    ) from exc
                actor = _Actor(step.name, index, handle)
                actors.append(actor)
                self._pending[handle.load.remote()] = (actor, "load")

    def send(self, task: Task) -> None:
        actors = self._actors.get(task.step_name)
        if actors is None:
            raise EngineError(
                f"A task was sent to step {task.step_name!r}, which is not running. "
                f"Running steps: {sorted(self._actors)}."
            )
        self._backlog[task.step_name].append(task)
        self._feed(task.step_name)

    def events(self, timeout: float) -> list[Event]:
        import ray

        events: list[Event] = []
        if not self._pending:
            if timeout > 0:
                time.sleep(timeout)  # nothing can arrive; still honour the caller's pacing
            return events
        refs = list(self._pending)
        ready, _ = ray.wait(refs, num_returns=1, timeout=max(timeout, 0.0))
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            self._collect(ref, events)
        return events

    def stop_steps(self, names: Sequence[str]) -> None:
        targets = [a for name in names for a in self._actors.get(name, [])]
        self._end(targets, graceful=True)
        for name in names:
            self._actors.pop(name, None)
            self._backlog.pop(name, None)

    def shutdown(self, force: bool = False) -> None:
        try:
            targets = [a for actors in self._actors.values() for a in actors]
            self._end(targets, graceful=not force)
        finally:
            self._actors.clear()
            self._backlog.clear()
            self._pending.clear()
            if self._owns_runtime:
                import ray

                ray.shutdown()
                self._owns_runtime = False
            self._connected = False

    def worker_pids(self) -> dict[str, list[int]]:
        """`{step name: [pid of each live replica]}`, for tests and debugging."""
        import ray

        pids: dict[str, list[int]] = {}
        for name, actors in sorted(self._actors.items()):
            live = [a for a in actors if not a.dead]
            pids[name] = ray.get([a.handle.pid.remote() for a in live], timeout=60)
        return pids

    # -- driver side of the data path ------------------------------------------------------

    def _connect(self) -> None:
        if self._connected:
            return
        import ray

        from stillhouse.ray import _runtime
        from stillhouse.ray._actor import StepActor

        self._owns_runtime = _runtime.connect(
            self.options.get("ray_head_node_url"),
            self.options.get("ray_init_kwargs"),
            self.options.get("num_cpus"),
        )
        self._connected = True
        self._actor_class = ray.remote(StepActor)

    def _feed(self, step_name: str) -> None:
        """Move held tasks to the least-loaded loaded replicas that have room.

        Only loaded replicas get tasks: one that waits for resources may never be placed."""
        backlog = self._backlog.get(step_name)
        while backlog:
            ready = [a for a in self._actors[step_name] if a.loaded and not a.dead]
            actor = min(ready, key=lambda a: a.inflight, default=None)
            if actor is None or actor.inflight >= self._per_actor.get(step_name, PER_ACTOR_TASKS):
                return
            actor.inflight += 1
            self._pending[actor.handle.run.remote(backlog.popleft())] = (actor, "run")

    def _collect(self, ref: Any, out: list[Event]) -> None:
        """Turn one finished ref into events (a death is reported once per actor)."""
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        actor, kind = self._pending.pop(ref)
        if kind == "run":
            actor.inflight -= 1
        try:
            reply = ray.get(ref)
        except RayActorError as exc:
            if actor.dead:
                return  # reported with its first failed ref
            if getattr(exc, "actor_init_failed", False):
                out.append(_creation_failed(actor, exc))
            else:
                out.append(Died(actor.step_name, actor.replica, _detail(exc)))
            actor.dead = True
            return
        except RayTaskError as exc:  # the actor method itself failed, e.g. a result that does not pickle
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            if isinstance(cause, FatalStepError):
                out.append(failed_event(actor.step_name, cause))
            else:
                out.append(Failed(actor.step_name, cause, str(exc)))
            return
        except RayError as exc:  # unschedulable, runtime_env setup failed, node lost, ...
            if not actor.dead:
                out.append(Died(actor.step_name, actor.replica, _detail(exc)))
            actor.dead = True
            return
        for record in reply.logs:
            reemit(record)
        if isinstance(reply.event, Loaded):
            actor.loaded = True
        if reply.event is not None:
            out.append(reply.event)
        if actor.step_name in self._backlog:
            self._feed(actor.step_name)

    def _end(self, targets: list[_Actor], *, graceful: bool) -> None:
        """Unload (when `graceful`) and kill `targets`; their refs are forgotten.

        Only loaded replicas unload: one still waiting to be placed has nothing to free,
        and asking it would wait the whole join timeout."""
        import ray

        if graceful:
            unloads = {}
            for actor in targets:
                if actor.loaded and not actor.dead:
                    try:
                        unloads[actor.handle.unload.remote()] = actor
                    except Exception:  # the runtime is gone already (e.g. Ctrl+C in ray)
                        actor.dead = True
            ready, late = [], []
            if unloads:
                ready, late = ray.wait(list(unloads), num_returns=len(unloads), timeout=self._join_timeout)
            for ref in ready:
                try:
                    for record in ray.get(ref).logs:
                        reemit(record)
                except Exception:
                    logger.debug("Replica of %r ended before it unloaded", unloads[ref].step_name)
            for ref in late:
                actor = unloads[ref]
                logger.warning(
                    "Replica %d of step %r did not unload within %.0f s; killing it.",
                    actor.replica, actor.step_name, self._join_timeout,
                )
        for actor in targets:
            with contextlib.suppress(Exception):  # already gone, or the runtime is
                ray.kill(actor.handle, no_restart=True)
            actor.dead = True
        gone = {id(a) for a in targets}
        for ref in [r for r, (a, _) in self._pending.items() if id(a) in gone]:
            del self._pending[ref]


def _creation_failed(actor: _Actor, exc: BaseException) -> Failed:
    error = RuntimeError(
        f"Replica {actor.replica} of step {actor.step_name!r} could not be created on the Ray "
        f"cluster: {exc}\nThe step is sent to each worker by pickling: define its class (or "
        "`@step` function) at module level of a module every node can import (pass "
        "`ray_init_kwargs={'runtime_env': {'working_dir': ...}}` for a remote cluster), "
        "and keep its fields picklable."
    )
    return Failed(actor.step_name, error, str(exc))


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"the Ray actor ended: {text[:500]}"
