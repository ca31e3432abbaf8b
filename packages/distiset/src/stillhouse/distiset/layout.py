"""Where results live: the names of files and folders the writer, the reader and
`Distiset` share. Nothing here reads or writes a file.

A run's folder (`<cache dir>/<pipeline name>/<signature>/`, the run store's):

```
pipeline.yaml                       PIPELINE_FILENAME
pipeline.log                        LOG_FILENAME
artifacts/<step>/<name>/...         ARTIFACTS_DIRNAME
data/<leaf>/00000.parquet, ...      parquet_name(n): rows in file order
data/<leaf>/_COMPLETE               COMPLETE_MARKER: rows, sizes, checksums, version
data/<leaf>/.unified-<key>.arrow    unified_name(key): the memory-mapped file `datasets`
data/<leaf>/.unified-<key>.arrow.check   reads, and its CHECK_SUFFIX file
```

A saved Distiset (`save_to_disk`): `<leaf>/` folders `datasets` wrote, beside
`pipeline.yaml`, `pipeline.log`, `README.md` and `artifacts/`; distilabel keeps the
first three in `distiset_configs/`.
"""

from __future__ import annotations

import posixpath

PIPELINE_FILENAME = "pipeline.yaml"
LOG_FILENAME = "pipeline.log"
ARTIFACTS_DIRNAME = "artifacts"
CARD_FILENAME = "README.md"
DISTILABEL_CONFIGS = "distiset_configs"
"""The folder distilabel's `save_to_disk` keeps `pipeline.yaml`, `pipeline.log` and the card in."""

COMPLETE_MARKER = "_COMPLETE"
PARQUET_SUFFIX = ".parquet"
CHECK_SUFFIX = ".check"
FILE_ID_KEY = b"stillhouse.file_id"
"""Parquet schema metadata naming each file uniquely, so readers can cache by it."""


def parquet_name(number: int) -> str:
    """The name of a leaf's `number`-th Parquet file."""
    return f"{number:05d}{PARQUET_SUFFIX}"


def file_order(path: str) -> tuple[int, str]:
    """Sort key of result files: numbered files by number (100000 after 99999)."""
    stem = posixpath.basename(path).removesuffix(PARQUET_SUFFIX)
    return (int(stem), stem) if stem.isdigit() else (2**63, stem)


def unified_name(key: str) -> str:
    """The hidden unified Arrow file of a leaf, named after what it was made from."""
    return f".unified-{key}.arrow"
