"""The stillhouse plugin of stillhouse-distiset: leaf rows go to Parquet, `run()` returns a Distiset."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stillhouse.core.hookspecs import hookimpl
from stillhouse.distiset._storage import join
from stillhouse.distiset.reader import LOG_FILENAME, PIPELINE_FILENAME
from stillhouse.distiset.writer import ParquetOutputWriter

if TYPE_CHECKING:
    from stillhouse.core.engine.context import RunContext


@hookimpl
def make_output_writer(context: RunContext) -> ParquetOutputWriter:
    """A `ParquetOutputWriter` for the run's leaves, in `context.data_dir` (a temporary
    folder if None), pointing at the run's `pipeline.yaml` and `pipeline.log`."""
    run_dir = context.run_dir
    return ParquetOutputWriter(
        context.data_dir,
        context.dag.leaves,
        pipeline_path=join(str(run_dir), PIPELINE_FILENAME) if run_dir else None,
        log_path=join(str(run_dir), LOG_FILENAME) if run_dir else None,
        enable_metadata=context.enable_metadata,
    )
