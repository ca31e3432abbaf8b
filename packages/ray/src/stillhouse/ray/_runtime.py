"""Where the "ray" executor's actors run: connecting to Ray, and checking before placing.

Connecting (a local runtime, a cluster, a Ray job), turning `StepResources` into
actor options, refusing resources no node can give and storage other nodes cannot
see. Nothing here creates actors or moves batches: that is `executor.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ray

from stillhouse.core.engine.context import RunContext
from stillhouse.core.errors import InvalidResourcesError, PipelineValidationError
from stillhouse.core.limits import worker_environment
from stillhouse.core.step import BaseStep, StepResources

logger = logging.getLogger("stillhouse.ray")

JOB_ENV_VARS = ("RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_JOB_ID")
"""Set in the entrypoint of `ray job submit` (besides RAY_ADDRESS): we are inside a job."""


def start_local_runtime(num_cpus: int | None = None, **init_kwargs: Any) -> None:
    """Start a Ray runtime on this machine for this process, as the executor does.

    Call it once before several `Pipeline(executor="ray").run()`s (tests, notebooks)
    so that they share one runtime instead of starting one each: the executor uses a
    runtime that is already initialised and leaves it running. Stop it with
    `ray.shutdown()`.
    """
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": True,
        "ignore_reinit_error": True,
        **init_kwargs,
    }
    kwargs["runtime_env"] = _with_driver_path(kwargs.get("runtime_env"))
    # "local": a cluster started with `ray start` on this machine is used only when
    # asked for (ray_head_node_url="auto"), so a run's resources are always its own.
    with _without_uv_run_hook():
        ray.init(address="local", num_cpus=num_cpus, **kwargs)


def connect(
    head_node_url: str | None, init_kwargs: Mapping[str, Any] | None, num_cpus: int | None
) -> bool:
    """Make sure this process talks to a Ray runtime; True when this call started it.

    In order: a runtime this process already initialised; `head_node_url`; an address
    in `init_kwargs`; RAY_ADDRESS; inside a Ray job, the job's cluster; else a new local
    runtime with `num_cpus` CPUs.
    """
    if ray.is_initialized():
        return False
    kwargs = dict(init_kwargs or {})
    address = head_node_url or kwargs.pop("address", None) or os.environ.get("RAY_ADDRESS")
    if address is None and any(os.environ.get(name) for name in JOB_ENV_VARS):
        address = "auto"
    if address is None:
        start_local_runtime(num_cpus, **kwargs)
        return True
    if num_cpus is not None:
        raise PipelineValidationError(
            f"The 'ray' executor option num_cpus={num_cpus!r} sizes a local Ray runtime, but "
            f"the run connects to the cluster at {address!r}, whose size is its own. Drop "
            "num_cpus, or drop ray_head_node_url/RAY_ADDRESS to run on this machine."
        )
    kwargs.setdefault("log_to_driver", True)
    kwargs.setdefault("ignore_reinit_error", True)
    logger.info("Connecting to the Ray cluster at %s", address)
    ray.init(address=address, **kwargs)
    return True


def _with_driver_path(runtime_env: Mapping[str, Any] | None) -> dict[str, Any]:
    """`runtime_env` plus a PYTHONPATH holding the driver's own `sys.path` entries.

    Ray gives local workers only the driver's script directory and working directory;
    a step imported from a folder the program put on `sys.path` (a notebook, a test
    suite) would not unpickle in them. ("mp" under spawn passes `sys.path` on too.)
    A PYTHONPATH the caller set in `env_vars` wins."""
    env = dict(runtime_env or {})
    env_vars = dict(env.get("env_vars") or {})
    installed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    own = [
        os.path.abspath(p or os.curdir)
        for p in sys.path
        if os.path.isdir(p or os.curdir) and not _inside(os.path.realpath(p or os.curdir), installed)
    ]
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = list(dict.fromkeys(own + inherited))
    if paths:
        env_vars.setdefault("PYTHONPATH", os.pathsep.join(paths))
        env["env_vars"] = env_vars
    return env


def _inside(path: str, roots: set[str]) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


@contextlib.contextmanager
def _without_uv_run_hook() -> Iterator[None]:
    # Under `uv run`, Ray makes its workers re-run `uv run` in a copy of the working
    # directory: on this machine the driver's interpreter is already the right one, and
    # the copy has no environment. (For a remote cluster the hook stays on.)
    from ray._private import ray_constants

    previous = getattr(ray_constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV", None)
    if previous is None:
        yield
        return
    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
    try:
        yield
    finally:
        ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = previous


# -- placement ------------------------------------------------------------------------


RESERVED = {"CPU": "cpus", "GPU": "gpus", "memory": "memory", "object_store_memory": None}


def actor_options(step: BaseStep) -> dict[str, Any]:
    """Ray actor options for one replica: it holds exactly what its `StepResources` name.

    Without `cpus` it holds no CPU (`num_cpus=0`), as a process under "mp" holds no
    core: any number of replicas fit on a small machine, and a replica is never left
    unplaced because others hold every CPU. (Ray's own actor default would need a free
    CPU to place the actor, and would hold one as soon as `gpus` or `resources` is set.)
    """
    resources = step.resources
    custom = dict(resources.resources or {})
    for name in custom:
        if name in RESERVED:
            instead = RESERVED[name]
            raise InvalidResourcesError(
                f"Step {step.name!r} names Ray's built-in resource {name!r} in "
                f"`resources.resources`. "
                + (f"Use `resources.{instead}` instead." if instead else "Leave it out.")
            )
    options: dict[str, Any] = {"num_cpus": resources.cpus or 0}
    if resources.gpus is not None:
        options["num_gpus"] = resources.gpus
    if resources.memory is not None:
        options["memory"] = resources.memory
    if custom:
        options["resources"] = custom
    shared = worker_environment()  # the run's shared limits (merged with the job's env_vars)
    if shared:
        options["runtime_env"] = {"env_vars": shared}
    return options


def demand(resources: StepResources) -> dict[str, float]:
    """What one replica holds on the node it is placed on, in Ray's resource names."""
    needs: dict[str, float] = {}
    if resources.cpus:
        needs["CPU"] = float(resources.cpus)
    if resources.gpus:
        needs["GPU"] = float(resources.gpus)
    if resources.memory:
        needs["memory"] = float(resources.memory)
    for name, amount in (resources.resources or {}).items():
        needs[name] = float(amount)
    return needs


def check_resources(steps: Sequence[BaseStep], nodes: Sequence[Mapping[str, float]]) -> None:
    """Raise `InvalidResourcesError` for a step no node could ever hold, or a stage whose
    steps cannot all hold one replica at once (that would wait forever)."""
    totals: dict[str, float] = {}
    for node in nodes:
        for name, amount in node.items():
            totals[name] = totals.get(name, 0.0) + amount
    for step in steps:
        needs = demand(step.resources)
        if any(all(node.get(k, 0.0) >= v for k, v in needs.items()) for node in nodes):
            continue
        raise InvalidResourcesError(
            f"Step {step.name!r} asks for {_describe(needs)} per replica, but no node of the "
            f"Ray cluster has that: {_shortfall(needs, nodes)}. Lower the step's `resources`, "
            "or add a node that has them (a local runtime takes `num_cpus` and `ray_init_kwargs="
            "{'num_gpus': ..., 'resources': {...}}`)."
        )
    once: dict[str, float] = {}
    wanted: dict[str, float] = {}
    for step in steps:
        for name, amount in demand(step.resources).items():
            once[name] = once.get(name, 0.0) + amount
            wanted[name] = wanted.get(name, 0.0) + amount * step.resources.replicas
    over = {k: v for k, v in once.items() if v > totals.get(k, 0.0)}
    if over:
        names = ", ".join(repr(s.name) for s in steps)
        raise InvalidResourcesError(
            f"The steps started together ({names}) need {_describe(over)} at once for one "
            f"replica each, but the Ray cluster has {_describe({k: totals.get(k, 0.0) for k in over})}: "
            "some would wait forever for the others to end. Lower their `resources`, put them "
            "in different `load_groups`, or add nodes."
        )
    short = {k: v for k, v in wanted.items() if v > totals.get(k, 0.0)}
    if short:
        logger.warning(
            "The replicas of this stage need %s in all, the Ray cluster has %s: some replicas "
            "will wait until resources free up, and the others do the work meanwhile.",
            _describe(short), _describe({k: totals.get(k, 0.0) for k in short}),
        )


def alive_nodes() -> list[dict[str, float]]:
    """The total resources of every live node."""
    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def _describe(needs: Mapping[str, float]) -> str:
    return ", ".join(f"{_amount(k, v)} {k}" for k, v in needs.items()) or "nothing"


def _amount(name: str, value: float) -> str:
    if name == "memory":
        return f"{value / 2**30:.3g} GiB of"
    return f"{value:g}"


def _shortfall(needs: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> str:
    parts = []
    for name, amount in needs.items():
        most = max((node.get(name, 0.0) for node in nodes), default=0.0)
        if most < amount:
            parts.append(
                f"no node has resource {name!r}" if most == 0 else
                f"the largest node has {_amount(name, most)} {name}"
            )
    return "; ".join(parts) or "no single node has all of it together"


# -- storage --------------------------------------------------------------------------


def check_storage(steps: Sequence[BaseStep], context: RunContext, node_count: int) -> None:
    """Refuse batch storage on a local path when workers may run on other nodes.

    The cache itself is only ever written by the driver, so a local cache is fine; but
    batch data (`use_fs_to_pass_data`, global steps) is read by the workers.
    """
    if context.dag is None or node_count < 2:
        return
    parameters = context.storage_parameters or {}
    has_global = any(context.dag.get_step(n).is_global for n in context.dag.step_names)
    if not (context.use_fs_to_pass_data or has_global or parameters.get("path")):
        return
    url = context.batch_data_url
    if "://" in url and not url.startswith(("file://", "local://")):
        return
    raise PipelineValidationError(
        f"Batch data would be passed through the local path {url!r}, but the Ray cluster "
        f"has {node_count} nodes and workers on the other nodes cannot read it "
        "(`use_fs_to_pass_data=True`, or a global step, uses it). Run with "
        "`storage_parameters={'path': 's3://bucket/prefix', ...}` (any fsspec URL every "
        "node can reach, plus its options), or on a single-node cluster."
    )
