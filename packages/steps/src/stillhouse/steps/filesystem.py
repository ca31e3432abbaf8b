"""`LoadDataFromFileSystem`: json/jsonl/csv/parquet files, local or on any fsspec
filesystem (`s3://`, `gcs://`, `memory://`...), named by a path, a folder or a glob.

Files are read as a stream in batches (`datasets`' streaming readers), so memory
stays flat however many rows they hold. Their sizes and change stamps (`_files.py`)
are in the step's cache signature: a changed, added or removed file is read again.
A file of zero bytes holds no rows, whatever its type: it is skipped (a glob of
empty files yields no rows and no columns), and takes no part in inferring the
filetype. Hidden files (`.gitkeep`) are not data (`_files.py`). A step reads one type:
files of several types, or of an unknown extension, are an error before the run
unless `filetype=` says how to read them all.
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

FILETYPES = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}

with optional_runtime_parameters():

    class LoadDataFromFileSystem(DatasetLoader):
        """Loads json, jsonl, csv or parquet files, in batches of `batch_size` rows.

        Attributes:
            data_files: A file, a folder (every file under it) or a glob
                (`data/*.jsonl`); a local path or an fsspec URL (`s3://bucket/data/`).
            split: The split name the rows get (as in distilabel). Defaults to "train".
            filetype: "json" (also for jsonl), "csv" or "parquet"; inferred from the
                extension of the files holding data when `None` (they must agree).
            streaming: Kept for distilabel compatibility: the files are always read as a
                stream, in batches.
            config: Accepted for distilabel compatibility (inherited there from
                `LoadDataFromHub`); no effect, as in distilabel.
            revision: Accepted for distilabel compatibility; no effect, as in distilabel.
            num_examples: How many rows to load at most (all when `None`).
            storage_options: fsspec options of the filesystem (endpoint, credentials: these
                are never saved).

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
        config: RuntimeParameter[str] | None = Field(
            default=None, description="Kept for distilabel compatibility; no effect."
        )
        revision: RuntimeParameter[str] | None = Field(
            default=None, description="Kept for distilabel compatibility; no effect."
        )
        repo_id: str | None = Field(default=None, exclude=True)  # distilabel's, excluded there too

        exclude_from_signature: ClassVar[set[str]] = {
            *DatasetLoader.exclude_from_signature, "config", "revision",
        }

        def resolve_files(self) -> tuple[Any, list[str]]:
            """The filesystem and the sorted files `data_files` names; an error if none."""
            with self._reaching(f"data_files {os.fspath(self.data_files)!r}"):
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
            with self._reaching(f"data_files {os.fspath(self.data_files)!r}"):
                entries = fingerprint(fs, files)
            # An unreadable filetype fails before any worker starts.
            self._filetype([path for path, size, _ in entries if size != 0])
            return {**super().signature_extra(), "files": entries}

        def _readable(self, fs: Any, files: list[str]) -> list[str]:
            """The files holding data: a file of zero bytes holds no rows, whatever its type."""
            with self._reaching(f"data_files {os.fspath(self.data_files)!r}"):
                return [path for path in files if fs.size(path) != 0]

        def _filetype(self, readable: list[str]) -> str | None:
            """The `datasets` builder that reads the files: `filetype`'s, else the one the
            extensions of the `readable` files (those holding data) name (json and jsonl are
            one); `None` when no file holds data."""
            if self.filetype:
                builder = FILETYPES.get(self.filetype.lower())
                if builder is None:
                    raise StepRuntimeError(
                        f"Step {self.name!r}: cannot read filetype {self.filetype!r}. Use one "
                        f"of {sorted(FILETYPES)}.",
                        step_name=self.name,
                    )
                return builder
            found: dict[str, str] = {}  # builder -> the first file it reads
            for path in readable:
                extension = Path(path).suffix.lstrip(".")
                builder = FILETYPES.get(extension.lower())
                if builder is None:
                    raise StepRuntimeError(
                        f"Step {self.name!r}: cannot read filetype {extension!r} (from "
                        f"{path!r}). Use one of {sorted(FILETYPES)}: remove the file from "
                        "data_files (a glob such as '*.jsonl' leaves it out), or set filetype= "
                        "to the type of every file.",
                        step_name=self.name,
                    )
                found.setdefault(builder, path)
            if len(found) > 1:
                (one, first), (other, second) = list(found.items())[:2]
                raise StepRuntimeError(
                    f"Step {self.name!r}: data_files {os.fspath(self.data_files)!r} holds files "
                    f"of different types: {first!r} ({one}) and {second!r} ({other}). A step "
                    "reads one type: keep one type of file per step (a loader for each type, or "
                    "a glob such as '*.jsonl'), or set filetype= when every file is of that type.",
                    step_name=self.name,
                )
            return next(iter(found), None)

        def _read_hint(self, error: Exception) -> str:
            cast = _cast_error(error)
            if cast is not None:
                return (
                    f"The files' columns differ: one has the columns {cast.table_column_names}, "
                    f"where the first rows read had {cast.requested_column_names}. Give every "
                    "file the same columns, or read the files with other columns in a step of "
                    "their own."
                )
            given = (f"filetype={self.filetype!r} says so" if self.filetype
                     else "the files' extension says so")
            return (
                f"Check that every file is of the type read ({given}; a .jsonl file holds one "
                "JSON object per line), fix or remove the bad file, or set filetype= to the "
                "files' real type: 'csv', 'json' or 'parquet'."
            )

        def _open(self) -> tuple[Any, str]:
            from datasets import Dataset, load_dataset

            fs, files = self.resolve_files()
            readable = self._readable(fs, files)
            filetype = self._filetype(readable)
            source = f"the files {describe_files(files)} as {filetype or 'empty files'}"
            if filetype is None or not readable:
                return Dataset.from_dict({}), source
            with self._reading(source):
                dataset = load_dataset(
                    filetype,
                    data_files={self.split: [fs.unstrip_protocol(path) for path in readable]},
                    split=self.split,
                    streaming=True,
                    storage_options=plain_options(self.storage_options),
                )
            return dataset, source


def _cast_error(error: BaseException) -> Any:
    """The `datasets` CastError behind `error` (a file whose columns are not the first
    rows'), or None."""
    from datasets.table import CastError

    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, CastError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None
