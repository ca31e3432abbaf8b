"""Built-in steps (same behaviour as distilabel's)."""

from stillhouse.core.steps.columns import (
    CombineOutputs,
    ExpandColumns,
    GroupColumns,
    KeepColumns,
    MergeColumns,
)
from stillhouse.core.steps.generators import LoadDataFromDicts, dataset_rows, make_generator_step

__all__ = [
    "CombineOutputs",
    "ExpandColumns",
    "GroupColumns",
    "KeepColumns",
    "LoadDataFromDicts",
    "MergeColumns",
    "dataset_rows",
    "make_generator_step",
]
