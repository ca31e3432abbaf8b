"""GPU placement for the "mp" executor: which devices each replica may see.

Pure bookkeeping on device names; setting `CUDA_VISIBLE_DEVICES` happens in the
worker (`_mp_worker.py`), and nothing here talks to a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from stillhouse.core.errors import InvalidResourcesError, PipelineValidationError
from stillhouse.core.step import BaseStep

GPU_COUNT_ENV = "STILLHOUSE_GPU_COUNT"
"""How many GPUs to hand out when `CUDA_VISIBLE_DEVICES` is unset (also lets tests fake GPUs)."""


def place_gpus(
    steps: Sequence[BaseStep], gpu_count: int, taken: Iterable[str]
) -> dict[tuple[str, int], list[str]]:
    """`{(step name, replica): devices}` for every replica of `steps` that wants GPUs.

    Devices come from the driver's `CUDA_VISIBLE_DEVICES` if set, else `0..gpu_count-1`;
    `taken` are held by replicas still running. Raises before anything is assigned if
    a step asks for more than are free.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
        source = f"CUDA_VISIBLE_DEVICES={visible!r}"
    else:
        devices = [str(i) for i in range(gpu_count)]
        source = f"gpu_count/{GPU_COUNT_ENV}={gpu_count}"
    busy = set(taken)
    free = [d for d in devices if d not in busy]
    placement: dict[tuple[str, int], list[str]] = {}
    for step in steps:
        per_replica, replicas = step.resources.gpus or 0, step.resources.replicas
        if not per_replica:
            continue
        if per_replica * replicas > len(free):
            raise InvalidResourcesError(
                f"Step {step.name!r} asks for {per_replica} GPU(s) for each of its "
                f"{replicas} replica(s), {per_replica * replicas} in all, but only "
                f"{len(free)} of the {len(devices)} GPU(s) are free ({source}). Lower "
                "`resources.gpus` or `resources.replicas`, or make more GPUs visible "
                f"with CUDA_VISIBLE_DEVICES or {GPU_COUNT_ENV}."
            )
        for index in range(replicas):
            placement[step.name, index], free = free[:per_replica], free[per_replica:]
    return placement


def parse_gpu_count(value: Any) -> int:
    """The `gpu_count` option (or env value) as a count, with a clear error if it is not one."""
    try:
        count = int(value or 0)
    except (TypeError, ValueError):
        count = -1
    if count < 0:
        raise PipelineValidationError(
            f"Invalid GPU count {value!r} (the `gpu_count` option or {GPU_COUNT_ENV}). "
            "Expected a whole number of GPUs, 0 or more."
        )
    return count
