"""`Distiset`: a pipeline's results, one `datasets.DatasetDict` per leaf step.

Saving and loading live here; building a Distiset from a run's Parquet files is
`reader.py`, pushing it to the Hugging Face Hub is `hub.py`. `datasets` is imported
where a value is made, not with this module: `run()` returns a Distiset whose leaves
are read on first use (`deferred`), so a run that nobody reads pays no import.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

from stillhouse.distiset._storage import (
    PathLike,
    copy_file,
    files_under,
    join,
    list_entries,
    public,
    resolve,
)
from stillhouse.distiset.layout import (
    ARTIFACTS_DIRNAME,
    CARD_FILENAME,
    DISTILABEL_CONFIGS,
    LOG_FILENAME,
    PIPELINE_FILENAME,
)


class _Pending:
    """The value of a leaf not read yet (never seen outside this module)."""

    def __repr__(self) -> str:
        return "<not read yet>"


_PENDING = _Pending()


def _as_location(value: PathLike | None) -> Path | str | None:
    """A local file as a `Path`, anything else (s3://, memory://) as its URL."""
    if value is None:
        return None
    text = os.fspath(value)
    if "://" in text and not text.startswith("file://"):
        return text
    return Path(text.removeprefix("file://"))


class Distiset(dict):
    """The results of a pipeline: leaf step name -> `datasets.DatasetDict`.

    Each value has a `"train"` split (and `"test"` after `train_test_split`). A
    pipeline with a single leaf step gives a single entry named `"default"`. As in
    distilabel, a value may also be a plain `datasets.Dataset`; splitting, saving and
    loading handle both.

    Attributes:
        pipeline_path: The `pipeline.yaml` that made these results, if known
            (a `Path`, or a URL for remote storage).
        log_filename_path: The run's `pipeline.log`, if known.
        artifacts_path: The folder of files steps saved as artifacts, if any;
            `artifacts` lists them per step.
        storage_options: fsspec options used to read the files above, if remote.
    """

    _pipeline_path: Path | str | None = None
    _log_filename_path: Path | str | None = None
    _artifacts_path: Path | str | None = None
    storage_options: dict[str, Any] | None = None
    run_summary: list[dict[str, Any]] | None = None
    """Per-step rows and timings of the run, shown in the dataset card when set."""
    leaf_steps: dict[str, str] | None = None
    """Configuration -> the leaf step whose results it holds (`"default"` -> the single
    leaf), when the Distiset was built from a run's results."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A temporary results folder the Datasets are mapped from, kept alive with them.
        self._owned_dir: Any = None
        self._load: Callable[[], dict[str, Any]] | None = None

    # -- leaves read on first use -----------------------------------------------------

    @classmethod
    def deferred(cls, names: list[str], load: Callable[[], dict[str, Any]]) -> Self:
        """A Distiset with the leaves `names`, whose values `load()` returns on first use.

        Keys, `len` and `in` need nothing read; any access to a value (indexing, `items`,
        `values`, `get`, `repr`, `==`, `dict(...)`, pickling, saving) reads every leaf
        first, so a value is never seen unread. `load` may raise (a damaged result file):
        then the access raises, and the next one tries again."""
        distiset = cls()
        for name in names:
            dict.__setitem__(distiset, name, _PENDING)
        distiset._load = load
        return distiset

    def _materialize(self) -> None:
        load = self.__dict__.get("_load")
        if load is None:
            return
        loaded = load()
        self._load = None
        for name, value in dict.items(self):
            if value is _PENDING:
                dict.__setitem__(self, name, loaded[name])

    def __getitem__(self, key: Any) -> Any:
        self._materialize()
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[Any]:
        # Defined so that `dict(d)`, `{**d}` and `update(d)` go through `__getitem__`
        # instead of copying the stored values directly.
        return super().__iter__()

    def get(self, key: Any, default: Any = None) -> Any:
        self._materialize()
        return super().get(key, default)

    def items(self) -> Any:
        self._materialize()
        return super().items()

    def values(self) -> Any:
        self._materialize()
        return super().values()

    def pop(self, key: Any, *default: Any) -> Any:
        self._materialize()
        return super().pop(key, *default)

    def popitem(self) -> tuple[Any, Any]:
        self._materialize()
        return super().popitem()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._materialize()
        return super().setdefault(key, default)

    def copy(self) -> Self:
        self._materialize()
        copied = type(self)(super().copy())
        copied.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_load"})
        return copied

    def __eq__(self, other: object) -> bool:
        self._materialize()
        if isinstance(other, Distiset):
            other._materialize()
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __or__(self, other: Any) -> Any:
        self._materialize()
        return super().__or__(other)

    def __ror__(self, other: Any) -> Any:
        self._materialize()
        return super().__ror__(other)

    def __getstate__(self) -> dict[str, Any]:
        self._materialize()
        return {k: v for k, v in self.__dict__.items() if k != "_load"}

    @property
    def pipeline_path(self) -> Path | str | None:
        return self._pipeline_path

    @pipeline_path.setter
    def pipeline_path(self, value: PathLike | None) -> None:
        self._pipeline_path = _as_location(value)

    @property
    def log_filename_path(self) -> Path | str | None:
        return self._log_filename_path

    @log_filename_path.setter
    def log_filename_path(self, value: PathLike | None) -> None:
        self._log_filename_path = _as_location(value)

    @property
    def artifacts_path(self) -> Path | str | None:
        """The folder holding `<step>/<files>` saved by steps as artifacts, if any."""
        return self._artifacts_path

    @artifacts_path.setter
    def artifacts_path(self, value: PathLike | None) -> None:
        self._artifacts_path = _as_location(value)

    @property
    def artifacts(self) -> dict[str, list[str]]:
        """`{step name: [file, ...]}` for the files under `artifacts_path`."""
        found: dict[str, list[str]] = {}
        for relative, location in self.artifact_files():
            found.setdefault(relative.split("/", 1)[0], []).append(location)
        return found

    def artifact_files(self) -> list[tuple[str, str]]:
        """`(path relative to artifacts_path, file location)` of every artifact file."""
        if self.artifacts_path is None:
            return []
        return files_under(self.artifacts_path, self.storage_options)

    # -- transforming ---------------------------------------------------------------

    def train_test_split(
        self, train_size: float, shuffle: bool = True, seed: int | None = None
    ) -> Self:
        """Split every leaf's `"train"` split into `"train"` and `"test"`, in place.

        Args:
            train_size: Fraction of rows that stay in `"train"`, between 0 and 1.
            shuffle: Shuffle the rows before splitting.
            seed: Seed of the shuffle, for a reproducible split.

        Returns:
            This Distiset.
        """
        if not 0 < train_size < 1:
            raise ValueError(f"train_size must be between 0 and 1 (exclusive), got {train_size!r}.")
        from datasets import Dataset, DatasetDict

        for name, splits in self.items():
            train = splits if isinstance(splits, Dataset) else splits["train"]
            if len(train) == 0:
                # datasets refuses to split nothing; an empty leaf has empty splits.
                self[name] = DatasetDict({"train": train, "test": train})
                continue
            self[name] = train.train_test_split(train_size=train_size, shuffle=shuffle, seed=seed)
        return self

    # -- disk -----------------------------------------------------------------------

    def save_to_disk(
        self,
        distiset_path: PathLike,
        storage_options: dict[str, Any] | None = None,
        save_card: bool = True,
        save_pipeline_config: bool = True,
        save_pipeline_log: bool = True,
        **kwargs: Any,
    ) -> None:
        """Save every leaf under `<distiset_path>/<leaf>/`, with the pipeline files beside.

        `pipeline.yaml` (with the `inline_data/` files it refers to), `pipeline.log` and
        the dataset card (`README.md`) are written to `distiset_path`, and step artifacts
        to `<distiset_path>/artifacts/<step>/<name>/` (distilabel's artifacts layout;
        distilabel puts the other three files in `distiset_configs/`, and
        `load_from_disk` reads both layouts).

        Args:
            distiset_path: A local path or an fsspec URL (`s3://...`, `memory://...`).
            storage_options: fsspec options for `distiset_path`.
            save_card: Write the dataset card `README.md`.
            save_pipeline_config: Copy `pipeline.yaml`, if known.
            save_pipeline_log: Copy `pipeline.log`, if known.
            **kwargs: Passed to `datasets.DatasetDict.save_to_disk` (`max_shard_size`,
                `num_shards`, `num_proc`).
        """
        fs, root = resolve(distiset_path, storage_options)
        stale = sorted(set(_saved_leaves(fs, root)) - set(self))
        if stale:  # before anything is written: nothing is lost either way
            raise FileExistsError(
                f"{os.fspath(distiset_path)!r} already holds the configuration(s) {stale}, which "
                f"this Distiset ({sorted(self)}) does not have: `load_from_disk` would read them "
                "with it, as one Distiset. Save to an empty folder, or remove those folders first."
            )
        for name, splits in self.items():
            splits.save_to_disk(
                fs.unstrip_protocol(join(root, name)), storage_options=storage_options, **kwargs
            )
        for source, filename, wanted in (
            (self.pipeline_path, PIPELINE_FILENAME, save_pipeline_config),
            (self.log_filename_path, LOG_FILENAME, save_pipeline_log),
        ):
            if source is not None and wanted:
                copy_file(source, fs, join(root, filename), self.storage_options)
        if self.pipeline_path is not None and save_pipeline_config:
            self._save_inline_data(self.pipeline_path, fs, root)
        for relative, location in self.artifact_files():
            copy_file(location, fs, join(root, ARTIFACTS_DIRNAME, relative), self.storage_options)
        if save_card:
            self._save_card(fs, root, os.path.basename(os.fspath(distiset_path).rstrip("/")))

    def _save_inline_data(self, pipeline_path: Path | str, fs: Any, root: str) -> None:
        """Copy the inline-data files `pipeline.yaml` refers to, at the same paths, so the
        saved copy still runs (`stillhouse pipeline run --config <saved>/pipeline.yaml`)."""
        from stillhouse.distiset._storage import read_bytes
        from stillhouse.distiset.pipeline_files import inline_files

        text = read_bytes(pipeline_path, self.storage_options)
        for relative, location in inline_files(pipeline_path, text, self.storage_options):
            copy_file(location, fs, join(root, relative), self.storage_options)

    def _save_card(self, fs: Any, root: str, name: str) -> None:
        """Write the dataset card as `push_to_hub` would, for a repository named `name`."""
        from stillhouse.distiset._storage import read_bytes
        from stillhouse.distiset.card import render_card

        pipeline_yaml = None
        if self.pipeline_path is not None:
            pipeline_yaml = read_bytes(self.pipeline_path, self.storage_options).decode("utf-8", "replace")
        # An empty YAML header: a new card, without huggingface_hub's "no metadata" warning.
        card = render_card(self, name, pipeline_yaml=pipeline_yaml, hub_url="https://huggingface.co",
                           existing_readme="---\n{}\n---\n")
        with fs.open(join(root, CARD_FILENAME), "w", encoding="utf-8") as handle:
            handle.write(card)

    @classmethod
    def load_from_disk(
        cls,
        distiset_path: PathLike,
        storage_options: dict[str, Any] | None = None,
        *,
        keep_in_memory: bool | None = None,
        download_dir: PathLike | None = None,
    ) -> Self:
        """Load a Distiset written by `save_to_disk` (a local path or an fsspec URL).

        Reads stillhouse's layout and distilabel's (`distiset_configs/`). `download_dir`
        is accepted for distilabel's signature and unused: remote folders are read in
        place through fsspec.
        """
        del download_dir
        from datasets import Dataset, DatasetDict

        fs, root = resolve(distiset_path, storage_options)
        if not fs.isdir(root):
            raise FileNotFoundError(
                f"No saved Distiset at {os.fspath(distiset_path)!r}: it is not a folder. "
                "Pass the path given to `Distiset.save_to_disk`."
            )
        distiset = cls()
        options = {"keep_in_memory": keep_in_memory, "storage_options": storage_options}
        for name, kind in _saved_leaves(fs, root).items():
            location = str(public(fs, join(root, name)))
            loader = DatasetDict if kind == "dataset_dict.json" else Dataset
            distiset[name] = loader.load_from_disk(location, **options)
        if not distiset:
            raise FileNotFoundError(
                f"{os.fspath(distiset_path)!r} holds no saved leaf (no `<leaf>/dataset_dict.json`). "
                "Pass the path given to `Distiset.save_to_disk`."
            )
        for filename, attribute in (
            (PIPELINE_FILENAME, "pipeline_path"),
            (LOG_FILENAME, "log_filename_path"),
        ):
            # Ours at the top; distilabel's in `distiset_configs/`.
            for folder in (root, join(root, DISTILABEL_CONFIGS)):
                if fs.exists(join(folder, filename)):
                    setattr(distiset, attribute, public(fs, join(folder, filename)))
                    break
        if fs.isdir(join(root, ARTIFACTS_DIRNAME)):
            distiset.artifacts_path = public(fs, join(root, ARTIFACTS_DIRNAME))
        distiset.storage_options = storage_options
        return distiset

    def transform_columns_to_image(self, columns: str | list[str]) -> Self:
        """Turn base64-encoded image columns into `datasets.Image` columns, in place.

        The Hub then shows them as images and they load back as `PIL.Image`s. Values
        may be bare base64 or `data:image/...;base64,` URLs. Needs Pillow
        (`pip install 'stillhouse-distiset[images]'`).

        Args:
            columns: A column name or a list of them; leaves without the column are left as is.

        Returns:
            This Distiset.
        """
        from datasets import Dataset, DatasetDict

        from stillhouse.distiset.images import to_image_columns

        names = [columns] if isinstance(columns, str) else list(columns)
        for name, value in self.items():
            if isinstance(value, Dataset):
                self[name] = to_image_columns(value, names)
            else:
                self[name] = DatasetDict(
                    {split: to_image_columns(data, names) for split, data in value.items()}
                )
        return self

    # -- hub ------------------------------------------------------------------------

    def push_to_hub(
        self,
        repo_id: str,
        private: bool = False,
        token: str | None = None,
        generate_card: bool = True,
        include_script: bool = False,
        **kwargs: Any,
    ) -> None:
        """Push every leaf to a Hub dataset repository as a configuration named after it.

        Then a dataset card (`README.md`), `pipeline.yaml`, `pipeline.log` and any
        artifacts are added in one commit. The token is sent to the Hub, never logged.

        Args:
            repo_id: `<user or org>/<name>` of the dataset repository (created if needed).
            private: Create the repository as private (an existing one is left as is).
            token: A Hub token; defaults to `HF_TOKEN` or the one saved by `hf auth login`.
            generate_card: Write the dataset card.
            include_script: Upload the script that was run (`sys.argv[0]`) if it exists.
            **kwargs: Passed to `datasets.DatasetDict.push_to_hub` (`max_shard_size`, ...).
        """
        from stillhouse.distiset.hub import push_distiset

        push_distiset(
            self,
            repo_id,
            private=private,
            token=token,
            generate_card=generate_card,
            include_script=include_script,
            **kwargs,
        )

    # -- display --------------------------------------------------------------------

    def __repr__(self) -> str:
        body = "\n".join(f"{name}: {splits}" for name, splits in self.items())
        body = re.sub(r"^", " " * 4, body, flags=re.M)
        return f"Distiset({{\n{body}\n}})"

    def row_counts(self) -> dict[str, dict[str, int]]:
        """`{leaf: {split: rows}}`."""
        from datasets import Dataset

        return {
            name: {"train": len(splits)} if isinstance(splits, Dataset)
            else {split: len(ds) for split, ds in splits.items()}
            for name, splits in self.items()
        }


def _saved_leaves(fs: Any, root: str) -> dict[str, str]:
    """`{leaf: the file datasets wrote in it}` of the folders under `root` that `datasets`
    saved (a DatasetDict, or a Dataset as distilabel allows), in name order; `artifacts/`,
    `distiset_configs/` and stray folders are not leaves; none when `root` is not a folder."""
    if not fs.isdir(root):
        return {}
    leaves = {}
    for entry in sorted(list_entries(fs, root), key=lambda e: e["name"]):
        leaf_dir = entry["name"].rstrip("/")
        if entry.get("type") != "directory":
            continue
        for marker in ("dataset_dict.json", "state.json"):
            if fs.exists(join(leaf_dir, marker)):
                leaves[os.path.basename(leaf_dir)] = marker
                break
    return leaves
