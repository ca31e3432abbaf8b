"""`LoadDataFromDisk`: a dataset saved with `datasets`' `save_to_disk`, or one leaf of
a Distiset saved with `Distiset.save_to_disk`, on a local path or any fsspec URL.

The saved Arrow files are memory-mapped and read in batches. Their sizes and
change stamps (`_files.py`) are in the step's cache signature: a dataset saved
again over the same path is read again. A folder that `save_to_disk` did not write
is an error before the run, saying what the folder holds; so is a `split` the saved
dataset does not hold. A Distiset's leaf is a saved DatasetDict or Dataset, as
`Distiset.load_from_disk` reads it. An error of the filesystem while finding the
folder (credentials, endpoint) names the step and `dataset_path` (`_loader.py`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from stillhouse.core import RuntimeParameter
from stillhouse.core.errors import StepRuntimeError
from stillhouse.steps._files import describe_files, fingerprint, list_files, open_fs
from stillhouse.steps._loader import DatasetLoader, optional_runtime_parameters
from stillhouse.steps._options import plain_options

_DATASET_DICT = "dataset_dict.json"  # what `DatasetDict.save_to_disk` writes
_DATASET_STATE = "state.json"  # what `Dataset.save_to_disk` writes

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
                When `None`, a dataset with a single split loads that split. A saved
                `Dataset` is one split: `None` or its own split name loads it.
            streaming: Accepted for distilabel compatibility (inherited there from
                `LoadDataFromHub`); no effect, as in distilabel: the saved files are
                memory-mapped and read in batches.
            revision: Accepted for distilabel compatibility; no effect, as in distilabel.
            num_examples: How many rows to load at most (all when `None`).
            storage_options: fsspec options of the filesystem (credentials are never saved).

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
        streaming: RuntimeParameter[bool] = Field(
            default=False, description="Kept for distilabel compatibility; no effect."
        )
        revision: RuntimeParameter[str] | None = Field(
            default=None, description="Kept for distilabel compatibility; no effect."
        )
        repo_id: str | None = Field(default=None, exclude=True)  # distilabel's, excluded there too

        exclude_from_signature: ClassVar[set[str]] = {
            *DatasetLoader.exclude_from_signature, "streaming", "revision",
        }

        def _location(self) -> tuple[Any, str]:
            """The filesystem and the folder `load_from_disk` reads: `dataset_path`, or its
            leaf `config` with `is_distiset`; an error saying what the folder holds if it is
            not what the fields say."""
            with self._reaching(f"dataset_path {os.fspath(self.dataset_path)!r}"):
                return self._locate()

        def _locate(self) -> tuple[Any, str]:
            fs, root = open_fs(self.dataset_path, self.storage_options)
            root = root.rstrip("/")
            if not fs.isdir(root):
                raise StepRuntimeError(
                    f"Step {self.name!r}: dataset_path {os.fspath(self.dataset_path)!r} is not "
                    "a folder. Pass the path given to `save_to_disk`.",
                    step_name=self.name,
                )
            if not self.is_distiset:
                self._check_saved_dataset(fs, root)
                return fs, root
            leaves = _distiset_leaves(fs, root)
            if not leaves:
                saved = _is_saved_dataset(fs, root)
                raise StepRuntimeError(
                    f"Step {self.name!r}: dataset_path {os.fspath(self.dataset_path)!r} holds no "
                    f"Distiset (no <configuration>/{_DATASET_DICT} nor <configuration>/"
                    f"{_DATASET_STATE} in it). "
                    + ("It holds a dataset saved with `save_to_disk`: set is_distiset=False."
                       if saved else "Pass the folder given to `Distiset.save_to_disk`."),
                    step_name=self.name,
                )
            if self.config not in leaves:
                raise StepRuntimeError(
                    f"Step {self.name!r}: configuration {self.config!r} not found in the "
                    f"Distiset at {os.fspath(self.dataset_path)!r}; available: {leaves}. Set "
                    "config= to one of them.",
                    step_name=self.name,
                )
            return fs, f"{root}/{self.config}"

        def _check_saved_dataset(self, fs: Any, root: str) -> None:
            """A folder `save_to_disk` wrote holds `dataset_dict.json` (a DatasetDict) or
            `state.json` (a Dataset); anything else is an error that says what it holds."""
            if _is_saved_dataset(fs, root):
                return
            leaves = _distiset_leaves(fs, root)
            if leaves:
                fix = (f"It holds a Distiset (configurations {leaves}): set is_distiset=True "
                       "and config= to one of them.")
            else:
                names = sorted(Path(p).name for p in fs.ls(root, detail=False))
                held = f"It holds {describe_files(names)}." if names else "It is empty."
                fix = (f"{held} Pass the folder given to `Dataset.save_to_disk` or "
                       "`DatasetDict.save_to_disk`.")
            raise StepRuntimeError(
                f"Step {self.name!r}: dataset_path {os.fspath(self.dataset_path)!r} is not a "
                f"dataset saved with `save_to_disk`: it has no {_DATASET_DICT} nor "
                f"{_DATASET_STATE}. {fix}",
                step_name=self.name,
            )

        def signature_extra(self) -> dict[str, Any]:
            fs, root = self._location()
            with self._reaching(f"dataset_path {os.fspath(self.dataset_path)!r}"):
                files = fingerprint(fs, list_files(fs, root))
            return {**super().signature_extra(), "files": files}

        def _read_hint(self, error: Exception) -> str:
            return ("Check that the folder holds a complete dataset written by `save_to_disk` "
                    "(save it again if the save was interrupted) and storage_options.")

        def _open(self) -> tuple[Any, str]:
            from datasets import DatasetDict, load_from_disk

            fs, root = self._location()
            source = f"the dataset saved at {fs.unstrip_protocol(root)!r}"
            with self._reading(source):
                dataset = load_from_disk(
                    fs.unstrip_protocol(root),
                    keep_in_memory=self.keep_in_memory,
                    storage_options=plain_options(self.storage_options),
                )
            if not isinstance(dataset, DatasetDict):
                self._check_own_split(dataset)
                return dataset, source
            splits = list(dataset)
            split = self.split if self.split is not None else (splits[0] if len(splits) == 1 else None)
            if split not in dataset:
                raise StepRuntimeError(
                    f"Step {self.name!r}: split {self.split!r} not found at "
                    f"{os.fspath(self.dataset_path)!r}; available: {splits}. Set split= to one "
                    "of them.",
                    step_name=self.name,
                )
            return dataset[split], f"split {split!r} of {source}"

        def _check_own_split(self, dataset: Any) -> None:
            """A saved `Dataset` is one split (its own, or none): `split` may name only it."""
            own = None if dataset.split is None else str(dataset.split)
            if self.split is None or self.split == own:
                return
            held = (f"a single Dataset of split {own!r}" if own is not None
                    else "a single Dataset saved without a split name")
            also = f" or split={own!r}" if own is not None else ""
            raise StepRuntimeError(
                f"Step {self.name!r}: split {self.split!r} not found at "
                f"{os.fspath(self.dataset_path)!r}: it holds {held}, not a DatasetDict of "
                f"splits. Set split=None{also} to load it, or pass the folder of a "
                "DatasetDict saved with that split.",
                step_name=self.name,
            )


def _distiset_leaves(fs: Any, root: str) -> list[str]:
    """The configurations of a Distiset saved at `root`: its folders holding a saved
    DatasetDict or Dataset (a leaf may be either). A folder that is a saved dataset itself
    has none (a DatasetDict's splits are such folders too)."""
    if _is_saved_dataset(fs, root):
        return []
    found = {Path(p).parent.name for name in (_DATASET_DICT, _DATASET_STATE)
             for p in fs.glob(f"{root}/*/{name}")}
    return sorted(found)


def _is_saved_dataset(fs: Any, root: str) -> bool:
    return fs.exists(f"{root}/{_DATASET_DICT}") or fs.exists(f"{root}/{_DATASET_STATE}")
