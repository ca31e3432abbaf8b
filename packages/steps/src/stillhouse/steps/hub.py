"""`LoadDataFromHub`: a dataset of the Hugging Face Hub, or of a local folder, read in
batches.

The revision asked for (a branch, tag or `None` for the default branch) is
resolved to its commit sha in the driver, before the run (`signature_extra`):
that sha is in the step's cache signature and is what the workers load, so a
dataset updated on the Hub is read again instead of being answered from the
cache of an older commit. Validation (`outputs`) resolves it again rather than
trusting the sha of an earlier run, and a sha pinned for another repo_id or
revision is never loaded. `HF_ENDPOINT` points it at another Hub.

A `repo_id` that names an existing directory (absolute, or relative to the current
directory) is that folder, as in `datasets.load_dataset`: a local path wins over a
Hub name, so "org/name" is the Hub's unless `./org/name` exists. Its pin is the
fingerprint of every file under it (`_files.py`) instead of a commit, and its rows
are read afresh from the files, never from `datasets`' prepared copy (which it keys
by mtime alone). `revision` means nothing there: `datasets` ignores it; so does this
step, with a warning.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import Field, PrivateAttr

from stillhouse.core import RuntimeParameter
from stillhouse.core.errors import StepRuntimeError
from stillhouse.core.lookups import lookup_once
from stillhouse.steps._files import fingerprint, list_files, open_fs
from stillhouse.steps._loader import DatasetLoader, optional_runtime_parameters
from stillhouse.steps._options import plain_options

_LOCAL_FIX = (
    "Check that the folder holds data files `datasets` reads (parquet, csv, json or jsonl, "
    "arrow, txt, ...), named after their split (train.jsonl, data/test-00000.parquet) or "
    "listed in its README.md's `configs`, and that split and config name what it holds."
)

_SLICE = re.compile(r"\[[^\]]*\]")
"""A slice of a split expression: `train[:5]`, `train[50%:]`, `train[:10]+test[:10]`."""

with optional_runtime_parameters():

    class LoadDataFromHub(DatasetLoader):
        """Loads a dataset from the Hugging Face Hub, in batches of `batch_size` rows.

        Attributes:
            repo_id: The Hub repository ID of the dataset (required), or a local folder
                of data files: a path to an existing directory wins, as in
                `datasets.load_dataset`.
            split: The split to load. Defaults to "train". A split expression of `datasets`
                ("train+test"; with streaming=False also slices: "train[:100]",
                "train[50%:]").
            config: The configuration to load, for datasets with several.
            revision: The branch, tag or commit to load; the default branch when `None`.
                Whatever it names is pinned to a commit sha when the run starts. Ignored
                (with a warning) for a local folder, as `datasets` ignores it.
            streaming: Read the files over HTTP as the rows are needed (`True`), or download
                them into the `datasets` cache first (`False`, the default). Both yield batches
                without holding the dataset in memory.
            num_examples: How many rows to load at most (all when `None`).
            storage_options: fsspec options (as in distilabel); credentials in them are
                never saved.

        Output columns: the dataset's columns.
        """

        repo_id: RuntimeParameter[str] = Field(
            default=None, description="The Hugging Face Hub repository ID of the dataset to load."
        )
        split: RuntimeParameter[str] = Field(
            default="train", description="The split of the dataset to load. Defaults to 'train'."
        )
        config: RuntimeParameter[str] | None = Field(
            default=None,
            description="The configuration of the dataset to load. This is optional and only"
            " needed if the dataset has multiple configurations.",
        )
        revision: RuntimeParameter[str] | None = Field(
            default=None,
            description="The revision of the dataset to load. Defaults to the latest revision.",
        )
        streaming: RuntimeParameter[bool] = Field(
            default=False,
            description="Whether to load the dataset in streaming mode or not. Defaults to False.",
        )

        _pin: tuple[tuple[str | None, str | None], Literal["hub", "folder"], str] | None = (
            PrivateAttr(default=None)
        )
        """`((repo_id, revision), kind, value)` as last resolved: the commit sha `revision`
        named on the Hub, or the absolute path of the local folder `repo_id` named."""

        def signature_extra(self) -> dict[str, Any]:
            folder = local_folder(self.repo_id)
            if folder is None:
                return {**super().signature_extra(), "revision": self.resolve_revision()}
            # The files are the pin; an ignored revision is not in the signature.
            files = self._folder_files(folder)
            self._pin_folder(folder)
            return {**super().signature_extra(), "revision": None, "files": files}

        def resolve_revision(self) -> str:
            """The commit sha `revision` names now; later loads of this step read that commit."""
            from huggingface_hub import HfApi, constants

            def ask() -> str:
                try:
                    return HfApi().dataset_info(self.repo_id, revision=self.revision).sha
                except Exception as exc:
                    raise StepRuntimeError(
                        f"Step {self.name!r}: cannot find revision {self.revision or 'main'!r} "
                        f"of dataset {self.repo_id!r} on the Hub ({type(exc).__name__}: {exc}). "
                        "Check repo_id and revision, your token (HF_TOKEN) and HF_ENDPOINT.",
                        step_name=self.name,
                    ) from exc

            # Asked once per run's preparation: validation and the signature pin one commit.
            sha = lookup_once(("hub commit", constants.ENDPOINT, self.repo_id, self.revision), ask)
            self._pin = ((self.repo_id, self.revision), "hub", sha)
            return sha

        def _folder_files(self, folder: str) -> list[list[Any]]:
            """The fingerprint of every file under `folder`; an error if there is none.
            A broken link is no file (`datasets` skips it too)."""
            try:
                fs, root = open_fs(folder, None)
                files = [path for path in list_files(fs, root)
                         if os.path.exists(path) or not os.path.islink(path)]
                entries = fingerprint(fs, files)
            except OSError as exc:
                raise StepRuntimeError(
                    f"Step {self.name!r}: cannot list the files of the local folder {folder!r} "
                    f"(repo_id {self.repo_id!r}): {type(exc).__name__}: {exc}. Check that the "
                    "folder and everything under it can be read.",
                    step_name=self.name,
                ) from exc
            if not entries:
                raise StepRuntimeError(
                    f"Step {self.name!r}: repo_id {self.repo_id!r} is the local folder "
                    f"{folder!r}, which has no files in it. Put the data files there (e.g. "
                    "train.jsonl), or give the Hub repository ID of a dataset (a local folder "
                    "of the same name would be read instead).",
                    step_name=self.name,
                )
            return entries

        def _pin_folder(self, folder: str) -> None:
            key = (self.repo_id, self.revision)
            if self.revision is not None and self._pin != (key, "folder", folder):
                self._logger.warning(
                    "Step %r: revision %r is ignored: repo_id %r is the local folder %r, which "
                    "has no revisions (datasets ignores it too). Remove revision=, or move the "
                    "folder away to load the Hub repository.",
                    self.name, self.revision, self.repo_id, folder,
                )
            self._pin = (key, "folder", folder)

        def _target(self) -> tuple[Literal["hub", "folder"], str | None]:
            """What `_open` reads: the pinned commit or folder when the pin is for these
            repo_id and revision, otherwise a folder if `repo_id` names one, else the Hub."""
            if self._pin is not None and self._pin[0] == (self.repo_id, self.revision):
                return self._pin[1], self._pin[2]
            folder = local_folder(self.repo_id)
            return ("hub", self.revision) if folder is None else ("folder", folder)

        def _peek(self) -> tuple[Any, str]:
            # The columns of the commit (or files) the run is about to pin, from a streaming
            # view: validation downloads no data file. A stream takes no slice: the columns
            # of "train[:5]" are those of "train".
            self.signature_extra()
            return self._open(streaming=True, split=_SLICE.sub("", self.split or "") or None)

        def _read_hint(self, error: Exception) -> str:
            if self._target()[0] == "folder":
                return ("Check the folder's data files (a bad line, a file of another type, a "
                        "file you may not read): fix or remove the bad file.")
            return "Check the dataset's files on the Hub, your connection and HF_ENDPOINT."

        def _open(self, streaming: bool | None = None, split: str | None = None) -> tuple[Any, str]:
            """The dataset `split` (the step's by default) as the workers load it, or as a
            stream when `streaming` says so (validation)."""
            from datasets import DownloadMode, load_dataset
            from datasets.exceptions import DatasetGenerationError

            if self.streaming and _SLICE.search(self.split or ""):
                raise StepRuntimeError(
                    f"Step {self.name!r}: split {self.split!r} takes a slice of the rows, which "
                    "a streaming dataset cannot (`datasets` refuses it). Set streaming=False "
                    "to load the slice, or load the whole split and take the first rows with "
                    "num_examples=.",
                    step_name=self.name,
                )
            kind, target = self._target()
            streaming = self.streaming if streaming is None else streaming
            split = self.split if split is None else split
            if kind == "folder":
                source = (f"split {self.split!r} (config {self.config!r}) of the local folder "
                          f"{target!r}")
                if not os.path.isdir(str(target)):
                    raise StepRuntimeError(
                        f"Step {self.name!r}: cannot load {source}: the folder is gone since "
                        "the run started. Put it back and run again.",
                        step_name=self.name,
                    )
                # Read from the files: `datasets`' prepared copy of them is keyed by their
                # mtime, which a same-size rewrite (`cp -p`, `rsync -t`) keeps.
                arguments: dict[str, Any] = {} if streaming else {
                    "download_mode": DownloadMode.FORCE_REDOWNLOAD,
                }
                path, fix = str(target), f" {_LOCAL_FIX}"
            else:
                source = (f"split {self.split!r} (config {self.config!r}) of dataset "
                          f"{self.repo_id!r} at revision {target!r}")
                arguments = {"revision": target,
                             "storage_options": plain_options(self.storage_options)}
                path, fix = str(self.repo_id), ""
            try:
                dataset = load_dataset(path, self.config, split=split, streaming=streaming,
                                       **arguments)
            except Exception as exc:
                cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
                if kind == "folder" and isinstance(exc, DatasetGenerationError):  # a bad file
                    fix = f" {self._read_hint(exc)}"
                raise StepRuntimeError(
                    f"Step {self.name!r}: cannot load {source}: {type(exc).__name__}: "
                    f"{str(exc).strip().rstrip('.')}{cause}.{fix}",
                    step_name=self.name,
                ) from exc
            return dataset, source


def local_folder(repo_id: str | None) -> str | None:
    """The absolute path of the directory `repo_id` names, or None (a Hub repository).

    The rule of `datasets.load_dataset`: an existing directory wins, relative to the
    current directory; "org/name" is a Hub name unless `./org/name` is a directory."""
    if not repo_id or not os.path.isdir(repo_id):
        return None
    return os.path.abspath(repo_id)
