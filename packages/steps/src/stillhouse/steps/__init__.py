"""stillhouse.steps: load data (Hub, disk, any filesystem), sample few-shot examples,
flag near-duplicates. distilabel 1.5's names, fields and behaviour (docs/steps.md).

The steps are imported on first use (`from stillhouse.steps import MinHashDedup`), not
with the package: the plugin entry point (`stillhouse.steps.plugin`) imports this
package on every run, which needs none of them unless a pipeline file names one."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stillhouse.steps.disk import LoadDataFromDisk
    from stillhouse.steps.filesystem import LoadDataFromFileSystem
    from stillhouse.steps.hub import LoadDataFromHub
    from stillhouse.steps.minhash import MinHashDedup
    from stillhouse.steps.sampler import DataSampler

_MODULES = {
    "LoadDataFromHub": "stillhouse.steps.hub",
    "LoadDataFromDisk": "stillhouse.steps.disk",
    "LoadDataFromFileSystem": "stillhouse.steps.filesystem",
    "DataSampler": "stillhouse.steps.sampler",
    "MinHashDedup": "stillhouse.steps.minhash",
}
"""Each step's module, in the order `STEPS` lists them."""

__all__ = [
    "STEPS",
    "DataSampler",
    "LoadDataFromDisk",
    "LoadDataFromFileSystem",
    "LoadDataFromHub",
    "MinHashDedup",
]


def __getattr__(name: str) -> Any:
    if name == "STEPS":
        value: Any = [__getattr__(step) for step in _MODULES]
    elif name in _MODULES:
        value = getattr(importlib.import_module(_MODULES[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
