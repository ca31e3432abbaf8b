"""Steps for the "ray" executor tests, importable by module name in Ray workers
(the repository root is on their path: see tests/conftest.py)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from stillhouse.core import Step, StepInput, StepOutput, step

logger = logging.getLogger("tests.ray.steps")


class PidFile(Step):
    """Writes its pid to `path` in load(), then takes `sleep` seconds per batch."""

    path: str
    sleep: float = 0.2

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    def load(self) -> None:
        Path(self.path).write_text(str(os.getpid()))

    def process(self, inputs: StepInput) -> StepOutput:
        time.sleep(self.sleep)
        yield inputs


@step(inputs=["x"], outputs=["x"])
def Chatty(inputs: StepInput) -> StepOutput:
    logger.warning("chatty saw %d rows in pid %d", len(inputs), os.getpid())
    yield inputs


@step(inputs=["x"], outputs=["lock"])
def Unpicklable(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["lock"] = threading.Lock()
    yield inputs


@step(inputs=["x"], outputs=["node"])
def NodeId(inputs: StepInput, sleep: float = 0.0) -> StepOutput:
    import ray

    time.sleep(sleep)
    node = ray.get_runtime_context().get_node_id()
    for row in inputs:
        row["node"] = node
    yield inputs


class NodeMarker(Step):
    """Writes `<marker_dir>/<node id>-<pid>` in load(); each batch waits (up to a minute)
    until `replicas` markers exist, so the run cannot end before every replica loaded,
    however slowly a worker starts on a loaded machine. Rows get the node they ran on."""

    marker_dir: str
    replicas: int = 2

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["node"]

    def load(self) -> None:
        import ray

        node = ray.get_runtime_context().get_node_id()
        Path(self.marker_dir, f"{node}-{os.getpid()}").write_text(node)

    def process(self, inputs: StepInput) -> StepOutput:
        import ray

        deadline = time.monotonic() + 60
        while len(os.listdir(self.marker_dir)) < self.replicas:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {os.listdir(self.marker_dir)} of {self.replicas} replicas loaded")
            time.sleep(0.05)
        node = ray.get_runtime_context().get_node_id()
        for row in inputs:
            row["node"] = node
        yield inputs


class SeesStorage(Step):
    """Records how many batch files its storage holds while it processes a batch."""

    storage: dict

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["stored"]

    def process(self, inputs: StepInput) -> StepOutput:
        import fsspec

        # An instance of its own: a listing cached in the shared one would hide the next
        # batch's file from the worker's own read.
        options = {k: v for k, v in self.storage.items() if k != "path"}
        fs, root = fsspec.core.url_to_fs(self.storage["path"], skip_instance_cache=True, **options)
        stored = len(fs.find(root))
        for row in inputs:
            row["stored"] = stored
        yield inputs


class HoldsALock(Step):
    """A step that cannot be pickled: a lock in a private attribute."""

    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs
