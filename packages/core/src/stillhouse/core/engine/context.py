"""`RunContext`: what one run tells plugins and executors about itself.

`run_pipeline` builds it once, frozen, and hands it to every hook and to
`Executor.start`. Nothing about a run crosses a package boundary any other way: a
plugin never reads private attributes of the user's `Pipeline`.

The context grows in steps, each a copy (`replace`): `make_run_store` gets it
without a run dir; `make_output_writer` and `make_batch_storage` get it with
`run_dir`, `data_dir` and `log_file`; the executor gets it with `batch_storage` too.
This module only describes a run; it does not run anything.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stillhouse.core.dag import DAG
    from stillhouse.core.engine.plan import ExecutionPlan
    from stillhouse.core.engine.protocol import BatchStorage
    from stillhouse.core.pipeline import Pipeline


@dataclass(frozen=True)
class RunContext:
    """One run of one pipeline, as plugins and executors see it.

    `pipeline` is there for what only it can give (`dump()`, `signature`); plugins
    read it and never set anything on it. Everything else a plugin needs is a field.
    A context made with no pipeline (`RunContext()`) serves executor tests: it has
    defaults for every field.
    """

    pipeline_name: str = ""
    pipeline: Pipeline | None = None
    dag: DAG | None = None
    plan: ExecutionPlan | None = None
    """The compiled execution plan (stages, routing, convergence, step kinds): see
    `stillhouse.core.engine.plan`. None only in a context made by hand."""
    executor: str = ""
    executor_options: Mapping[str, Any] = field(default_factory=dict)
    cache_dir: str = ""
    use_cache: bool = True
    fresh_steps: frozenset[str] = frozenset()
    """Steps whose stored outputs must not be reused, and everything after them."""
    enable_metadata: bool = False
    storage_parameters: Mapping[str, Any] | None = None
    """`run(storage_parameters=...)`: `{"path": URL, **fsspec options}` or None."""
    use_fs_to_pass_data: bool = False
    run_dir: str | None = None
    """Where this run's cache lives (a local path or a URL), or None: nothing is kept."""
    data_dir: Any = None
    """Where the run store wants leaf results, or None to keep them in memory."""
    log_file: Path | None = None
    """The local `pipeline.log` of this run, or None."""
    batch_storage: BatchStorage | None = None
    """How batch data passes through a filesystem in this run, or None."""

    @property
    def pipeline_file(self) -> str | None:
        """`<run dir>/pipeline.yaml`, the record of what ran, or None without a run dir."""
        return f"{self.run_dir.rstrip('/')}/pipeline.yaml" if self.run_dir else None

    @property
    def is_local(self) -> bool:
        """The run dir is a folder of this machine (not a remote URL, not absent)."""
        return bool(self.run_dir) and "://" not in str(self.run_dir)

    @property
    def batch_data_url(self) -> str:
        """Where batch data goes (`use_fs_to_pass_data`, global steps): the `path` of
        `storage_parameters`, else `<run dir>/batch_data` for a local cache, else this
        machine's temporary folder (a remote cache is for durability; batch data stays
        here unless asked). The batch storage and the executors' checks both read it."""
        given = (self.storage_parameters or {}).get("path")
        if given is not None:
            return str(given)
        if self.is_local:
            return f"{self.run_dir}/batch_data"
        return f"{tempfile.gettempdir()}/stillhouse-batch-data"

    def replace(self, **changes: Any) -> RunContext:
        """A copy with `changes` (the context itself never changes)."""
        return dataclasses.replace(self, **changes)
