"""`LoadDataFromHub`: a dataset of the Hugging Face Hub, read in batches.

The revision asked for (a branch, tag or `None` for the default branch) is
resolved to its commit sha in the driver, before the run (`signature_extra`):
that sha is in the step's cache signature and is what the workers load, so a
dataset updated on the Hub is read again instead of being answered from the
cache of an older commit. Validation (`outputs`) resolves it again rather than
trusting the sha of an earlier run, and a sha pinned for another repo_id or
revision is never loaded. `HF_ENDPOINT` points it at another Hub.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr

from stillhouse.core import RuntimeParameter
from stillhouse.core.errors import StepRuntimeError
from stillhouse.steps._loader import DatasetLoader, optional_runtime_parameters
from stillhouse.steps._options import plain_options

with optional_runtime_parameters():

    class LoadDataFromHub(DatasetLoader):
        """Loads a dataset from the Hugging Face Hub, in batches of `batch_size` rows.

        Attributes:
            repo_id: The Hub repository ID of the dataset (required).
            split: The split to load. Defaults to "train".
            config: The configuration to load, for datasets with several.
            revision: The branch, tag or commit to load; the default branch when `None`.
                Whatever it names is pinned to a commit sha when the run starts.
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

        _pin: tuple[tuple[str | None, str | None], str] | None = PrivateAttr(default=None)
        """`((repo_id, revision), sha)`: the commit `revision` named when last resolved."""

        def signature_extra(self) -> dict[str, Any]:
            return {**super().signature_extra(), "revision": self.resolve_revision()}

        def resolve_revision(self) -> str:
            """The commit sha `revision` names now; later loads of this step read that commit."""
            from huggingface_hub import HfApi

            try:
                info = HfApi().dataset_info(self.repo_id, revision=self.revision)
            except Exception as exc:
                raise StepRuntimeError(
                    f"Step {self.name!r}: cannot find revision {self.revision or 'main'!r} of "
                    f"dataset {self.repo_id!r} on the Hub ({type(exc).__name__}: {exc}). Check "
                    "repo_id and revision, your token (HF_TOKEN) and HF_ENDPOINT.",
                    step_name=self.name,
                ) from exc
            self._pin = ((self.repo_id, self.revision), info.sha)
            return info.sha

        def _pinned_commit(self) -> str | None:
            if self._pin is None or self._pin[0] != (self.repo_id, self.revision):
                return None
            return self._pin[1]

        def _peek(self) -> tuple[Any, str]:
            # The columns of the commit the run is about to pin, from a streaming view:
            # validation downloads no data file.
            self.resolve_revision()
            return self._open(streaming=True)

        def _read_hint(self) -> str:
            return "Check the dataset's files on the Hub, your connection and HF_ENDPOINT."

        def _open(self, streaming: bool | None = None) -> tuple[Any, str]:
            from datasets import load_dataset

            revision = self._pinned_commit() or self.revision
            source = (f"split {self.split!r} (config {self.config!r}) of dataset "
                      f"{self.repo_id!r} at revision {revision!r}")
            try:
                dataset = load_dataset(
                    self.repo_id,
                    self.config,
                    split=self.split,
                    revision=revision,
                    streaming=self.streaming if streaming is None else streaming,
                    storage_options=plain_options(self.storage_options),
                )
            except Exception as exc:
                raise StepRuntimeError(
                    f"Step {self.name!r}: cannot load {source}: {type(exc).__name__}: {exc}",
                    step_name=self.name,
                ) from exc
            return dataset, source
