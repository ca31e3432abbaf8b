"""Read results the same way whether run() returned a Distiset or a dict of rows."""

from __future__ import annotations

from typing import Any


def rows_of(result: Any, leaf: str | None = None) -> list[dict[str, Any]]:
    if leaf is None:
        assert len(result) == 1, f"several leaves: {list(result)}"
        leaf = next(iter(result))
    if leaf not in result and "default" in result:
        leaf = "default"
    value = result[leaf]
    if isinstance(value, list):
        return value
    return value["train"].to_list()
