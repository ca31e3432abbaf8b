"""The stillhouse plugin of stillhouse-distiset: leaf rows go to Parquet, `run()` returns a Distiset."""

from __future__ import annotations

from typing import Any

from stillhouse.core.hookspecs import hookimpl
from stillhouse.distiset._storage import join
from stillhouse.distiset.reader import LOG_FILENAME, PIPELINE_FILENAME
from stillhouse.distiset.writer import ParquetOutputWriter


@hookimpl
def stillhouse_make_output_writer(pipeline: Any, data_dir: Any) -> ParquetOutputWriter:
    """A `ParquetOutputWriter` for `pipeline`'s leaves, in `data_dir` (a temporary folder if None)."""
    run_dir = getattr(pipeline, "_run_dir", None)
    return ParquetOutputWriter(
        data_dir,
        pipeline.dag.leaves,
        pipeline_path=join(str(run_dir), PIPELINE_FILENAME) if run_dir else None,
        log_path=join(str(run_dir), LOG_FILENAME) if run_dir else None,
        enable_metadata=pipeline.enable_metadata,
    )
