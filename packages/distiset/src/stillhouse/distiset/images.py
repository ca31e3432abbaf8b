"""Base64-encoded image columns to `datasets.Image` columns (`transform_columns_to_image`).

Only the conversion lives here; which leaves and splits it applies to is `Distiset`'s
business. Pillow is an optional dependency (`stillhouse-distiset[images]`).
"""

from __future__ import annotations

import base64
import importlib.util
from typing import Any

from datasets import Dataset, Image


def to_image_columns(dataset: Dataset, columns: list[str]) -> Dataset:
    """`dataset` with each of `columns` it has decoded from base64 and cast to `Image`."""
    present = [column for column in columns if column in dataset.column_names]
    if not present:
        return dataset
    if importlib.util.find_spec("PIL") is None:
        raise ImportError(
            f"transform_columns_to_image({present!r}) needs Pillow to make images. Install it "
            "with `pip install 'stillhouse-distiset[images]'` (or `pip install pillow`)."
        )

    def decode(row: dict[str, Any]) -> dict[str, Any]:
        return {column: _image_bytes(row[column], column) for column in present}

    dataset = dataset.map(decode)
    for column in present:
        dataset = dataset.cast_column(column, Image(decode=True))
    return dataset


def _image_bytes(value: Any, column: str) -> dict[str, Any] | None:
    """`{"bytes": ..., "path": None}` (what `datasets.Image` stores) from a base64 string."""
    if value is None or isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"Column {column!r} holds a {type(value).__name__}, not a base64 string: "
            f"{value!r:.60}. Pass only columns of base64-encoded images."
        )
    encoded = value.split(",", 1)[1] if value.startswith("data:") else value
    return {"bytes": base64.b64decode(encoded), "path": None}
