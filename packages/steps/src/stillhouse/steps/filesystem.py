"""`LoadDataFromFileSystem`: json/jsonl/csv/parquet files, local or on any fsspec
filesystem (`s3://`, `gcs://`, `memory://`...), named by a path, a folder or a glob.

Files are read as a stream in batches (`datasets`' streaming readers), so memory
stays flat however many rows they hold. Their sizes and mtimes/ETags are in the
step's cache signature: a changed, added or removed file is read again.
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

FILETYPES = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}

with optional_runtime_parameters():

    class LoadDataFromFileSystem(DatasetLoader):
        """Loads json, jsonl, csv or parquet files, in batches of `batch_size` rows.

        Attributes:
            data_files: A file, a folder (every file under it) or a glob
                (`data/*.jsonl`); a local path or an fsspec URL (`s3://bucket/data/`).
            split: The split name the rows get (as in distilabel). Defaults to "train".
            filetype: "json" (also for jsonl), "csv" or "parquet"; inferred from the
                first file's extension when `None`.
            streaming: Kept for distilabel compatibility: the files are always read as a
                stream, in batches.
            num_examples: How many rows to load at most (all when `None`).
            storage_options: fsspec options of the filesystem (credentials, endpoint).

        Output columns: the files' columns.
        """

        data_files: RuntimeParameter[str | Path] = Field(
            default=None,
            description="The data files, or directory containing the data files, to generate "
            "the dataset from.",
        )
        split: RuntimeParameter[str] = Field(
            default="train", description="The split of the dataset to load. Defaults to 'train'."
        )
        filetype: RuntimeParameter[str] | None = Field(
            default=None,
            description="The expected filetype. If not provided, it will be inferred from the "
            "file extension.",
        )
        streaming: RuntimeParameter[bool] = Field(
            default=False,
            description="Kept for distilabel compatibility; files are always streamed.",
        )

        def resolve_files(self) -> tuple[Any, list[str]]:
            """The filesystem and the sorted files `data_files` names; an error if none."""
            fs, root = open_fs(self.data_files, self.storage_options)
            files = list_files(fs, root)
            if not files:
                raise StepRuntimeError(
                    f"Step {self.name!r}: data_files {os.fspath(self.data_files)!r} matches no "
                    "file. Check the path, the glob or storage_options.",
                    step_name=self.name,
                )
            return fs, files

        def signature_extra(self) -> dict[str, Any]:
            fs, files = self.resolve_files()
            self._filetype(files)  # an unreadable filetype fails before any worker starts
            return {**super().signature_extra(), "files": fingerprint(fs, files)}

        def _filetype(self, files: list[str]) -> str:
            given = self.filetype or Path(files[0]).suffix.lstrip(".")
            builder = FILETYPES.get(given.lower())
            if builder is None:
                raise StepRuntimeError(
                    f"Step {self.name!r}: cannot read filetype {given!r} (from "
                    f"{files[0]!r}). Use one of {sorted(FILETYPES)}, or set filetype=.",
                    step_name=self.name,
                )
            return builder

        def _open(self) -> Any:
            from datasets import load_dataset

            fs, files = self.resolve_files()
            urls = [fs.unstrip_protocol(path) for path in files]
            return load_dataset(
                self._filetype(files),
                data_files={self.split: urls},
                split=self.split,
                streaming=True,
                storage_options=self.storage_options,
            )
