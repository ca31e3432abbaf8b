"""The files a `pipeline.yaml` needs beside it, so that copies of it still run.

A run's `pipeline.yaml` keeps inline rows (`LoadDataFromDicts(data=...)`,
`run(dataset=...)`) out of itself: it refers to `inline_data/<sha>.parquet` (or `.json`) files
next to it (`stillhouse.core.inline_data`). Wherever the file is copied to (a
Hub repository, a saved Distiset), those files go too, at the same relative
paths, or `stillhouse pipeline run --config <copy>` cannot load the pipeline.

Only finding the files is here; copying or uploading them is the caller's.
"""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from stillhouse.core.inline_data import REFERENCE_KEY, is_reference
from stillhouse.distiset._storage import PathLike, exists

logger = logging.getLogger("stillhouse.distiset")


def inline_references(pipeline_yaml: str | bytes) -> list[str]:
    """The relative paths of the inline-data files a pipeline file refers to, in order,
    each once. Paths that leave the file's folder are left out (loading refuses them)."""
    try:
        data = yaml.safe_load(pipeline_yaml)
    except yaml.YAMLError:
        return []
    found: dict[str, None] = {}
    pending: list[Any] = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            if is_reference(value):
                relative = str(value[REFERENCE_KEY])
                parts = PurePosixPath(relative).parts
                if relative.startswith("/") or ".." in parts or not parts:
                    logger.warning(
                        "The pipeline file refers to the data file %r, outside its folder: "
                        "it is not copied along.", relative,
                    )
                else:
                    found[relative] = None
                continue
            pending.extend(reversed(list(value.values())))
        elif isinstance(value, list):
            pending.extend(reversed(value))
    return list(found)


def inline_files(
    pipeline_path: PathLike,
    pipeline_yaml: str | bytes,
    storage_options: dict[str, Any] | None = None,
) -> list[tuple[str, Path | str]]:
    """`(path relative to the pipeline file, location)` of each inline-data file that
    `pipeline_yaml` (the content of `pipeline_path`) refers to and that exists. A missing
    one is a warning: the copy will not load until the file is put beside it."""
    text = os.fspath(pipeline_path)
    remote = "://" in text and not text.startswith("file://")
    files: list[tuple[str, Path | str]] = []
    for relative in inline_references(pipeline_yaml):
        if remote:
            location: Path | str = f"{posixpath.dirname(text)}/{relative}"
        else:
            location = Path(text.removeprefix("file://")).parent / relative
        if not exists(location, storage_options):
            logger.warning(
                "The pipeline file %s refers to the data file %s, which is missing: the copy "
                "of the pipeline file will not load until that file is put beside it.",
                text, location,
            )
            continue
        files.append((relative, location))
    return files
