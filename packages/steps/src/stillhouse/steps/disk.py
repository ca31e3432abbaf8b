"""`LoadDataFromDisk`: a dataset saved with `datasets`' `save_to_disk`, or one leaf of
a Distiset saved with `Distiset.save_to_disk`, on a local path or any fsspec URL.

The saved Arrow files are memory-mapped and read in batches. Their sizes and
mtimes are in the step's cache signature: a dataset saved again over the same
path is read again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field

from stillhouse.core import RuntimeParameter
from stillhouse.core.errors import StepRuntimeError
from stillhouse.steps._files import fingerprint, list_files, open_fs
from stillhouse.steps._loader import DatasetLoader, optional_runtime_parameters

with optional_runtime_parameters():

    class LoadDataFromDisk(DatasetLoader):
        """Loads a dataset or Distiset saved to disk, in batches of `batch_size` rows.

        Attributes:
            dataset_path: The folder given to `save_to_disk` (local path or fsspec URL).
            config: With `is_distiset=True`, the leaf (configuration) to load. Defaults
                to "default", the name of a Distiset's single leaf.
            is_distiset: Whether `dataset_path` holds a Distiset. Defaults to False.
            keep_in_memory: Copy the dataset into memory (see `datasets.load_from_disk`).
            split: The split to load from a `DatasetDict` (a Distiset leaf has "train").
                When `None`, a dataset with a single split loads that split.
            num_examples: How many rows to load at most (all when `None`).
            storage_options: fsspec options of the filesystem.

        Output columns: the dataset's columns.
        """

        dataset_path: RuntimeParameter[str | Path] = Field(
            default=None, description="Path to the dataset or distiset."
        )
        config: RuntimeParameter[str] | None = Field(
            default="default",
            description="The configuration of the dataset to load. Will default to 'default',"
            " which corresponds to a distiset with a single configuration.",
        )
        is_distiset: RuntimeParameter[bool] | None = Field(
            default=False,
            description="Whether the dataset to load is a `Distiset` or not. Defaults to False.",
        )
        keep_in_memory: RuntimeParameter[bool] | None = Field(
            default=None,
            description="Whether to copy the dataset in-memory, see "
            "`datasets.Dataset.load_from_disk` for more information. Defaults to `None`.",
        )
        split: RuntimeParameter[str] | None = Field(
            default=None,
            description="The split of the dataset to load. By default the only split.",
        )

        def _location(self) -> tuple[Any, str]:
            fs, root = open_fs(self.dataset_path, self.storage_options)
            root = root.rstrip("/")
            if not fs.isdir(root):
                raise StepRuntimeError(
                    f"Step {self.name!r}: dataset_path {os.fspath(self.dataset_path)!r} is not "
                    "a folder. Pass the path given to `save_to_disk`.",
                    step_name=self.name,
                )
            if not self.is_distiset:
                return fs, root
            leaves = sorted(
                Path(p).parent.name for p in fs.glob(f"{root}/*/dataset_dict.json")
            )
            if self.config not in leaves:
                raise StepRuntimeError(
                    f"Step {self.name!r}: configuration {self.config!r} not found in the "
                    f"Distiset at {os.fspath(self.dataset_path)!r}; available: {leaves}. Set "
                    "config= to one of them.",
                    step_name=self.name,
                )
            return fs, f"{root}/{self.config}"

        def signature_extra(self) -> dict[str, Any]:
            fs, root = self._location()
            return {**super().signature_extra(), "files": fingerprint(fs, list_files(fs, root))}

        def _open(self) -> Any:
            from datasets import DatasetDict, load_from_disk

            fs, root = self._location()
            dataset = load_from_disk(
                fs.unstrip_protocol(root),
                keep_in_memory=self.keep_in_memory,
                storage_options=self.storage_options,
            )
            if not isinstance(dataset, DatasetDict):
                return dataset
            splits = list(dataset)
            split = self.split if self.split is not None else (splits[0] if len(splits) == 1 else None)
            if split not in dataset:
                raise StepRuntimeError(
                    f"Step {self.name!r}: split {self.split!r} not found at "
                    f"{os.fspath(self.dataset_path)!r}; available: {splits}. Set split= to one "
                    "of them.",
                    step_name=self.name,
                )
            return dataset[split]
