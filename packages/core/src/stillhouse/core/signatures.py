"""What a signature hashes: a model's dump without the fields that do not change results.

A step says which of its fields do not change what it computes in its
`exclude_from_signature` class attribute (batch sizes, resources, timeouts). A model
held in one of its fields says the same for its own fields: an LLM's request timeout
or concurrency limit changes how its answers arrive, not what they are, so editing
it must not start the step's cache afresh. The cache's step signature and
`Step.signature` both go through `result_affecting`, which also puts the items of
every set in a stable order (a set dumps in hash order, which `PYTHONHASHSEED`
changes from one process to the next).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel


def result_affecting(dumped: dict[str, Any], model: BaseModel) -> dict[str, Any]:
    """`dumped` (a JSON dump of `model`) without the keys named in `exclude_from_signature`:
    the model's own, and those of every model held in its fields, at any depth; sets'
    items sorted."""
    excluded = getattr(model, "exclude_from_signature", ())
    # `__dict__`, not getattr: a dump key that is no field (`type_info`) may be a property.
    values = vars(model)
    return {
        key: _nested(value, values.get(key))
        for key, value in dumped.items()
        if key not in excluded
    }


def _nested(dumped: Any, value: Any) -> Any:
    if isinstance(value, set | frozenset) and isinstance(dumped, list):
        return sorted(dumped, key=lambda item: json.dumps(item, sort_keys=True, default=repr))
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        return result_affecting(dumped, value)
    if isinstance(value, (list, tuple)) and isinstance(dumped, list) and len(value) == len(dumped):
        return [_nested(d, v) for d, v in zip(dumped, value, strict=True)]
    if isinstance(value, dict) and isinstance(dumped, dict):
        return {key: _nested(d, value.get(key)) for key, d in dumped.items()}
    return dumped


__all__ = ["result_affecting"]
