"""stillhouse.cache: signatures, the cache layout, incremental checkpoints and resume."""

from stillhouse.cache.run_store import FileRunStore, pipeline_dir
from stillhouse.cache.signature import step_signatures
from stillhouse.cache.store import FileStepStore

__all__ = ["FileRunStore", "FileStepStore", "pipeline_dir", "step_signatures"]
