"""How a pipeline file names a step class or routing function defined in the user's script.

A class (or an `@routing_batch_function`) defined in the script being run lives in
module `__main__`, a name no other process can import. Pipeline files name it by the
script's module name (`quickstart` for `quickstart.py`) and carry the script's path,
relative to the file (`type_info: {module: quickstart, name: CountWords, file:
../quickstart.py}`), so `stillhouse pipeline run --config` can import it; signatures
use the same module name, so a run from the script and a run from the CLI share their
cache.

What does not belong here: deciding which objects a file may name (that is the
resolution rule in `serialization.py` and `RoutingBatchFunction.from_dump`); this only
makes the script importable.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

_warned: set[tuple[str, str]] = set()


def _main_file() -> Path | None:
    file = getattr(sys.modules.get("__main__"), "__file__", None)
    return Path(file).resolve() if file else None


def class_module(cls: type) -> str:
    """The module name to record for `cls`: its own, or the script's for `__main__`."""
    return module_name(cls.__module__)


def module_name(module: str) -> str:
    """The name to record for module `module`: its own, or the script's for `__main__`."""
    if module != "__main__":
        return module
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return spec.name  # `python -m package.module`: its real, importable name
    file = _main_file()
    return file.stem if file is not None and file.stem.isidentifier() else "__main__"


def script_file(obj: Any) -> str | None:
    """The absolute path of the script that defines `obj` (a step class or a routing
    function), when it is `__main__`."""
    file = _main_file() if getattr(obj, "__module__", None) == "__main__" else None
    return str(file) if file is not None else None


def why_unreferenceable(cls: Any) -> str | None:
    """Why a pipeline file cannot name `cls` (a class or a function) so that another
    process imports it, or None."""
    if "<locals>" in cls.__qualname__:
        return "it is defined inside a function"
    if cls.__module__ == "__main__":
        file = _main_file()
        if file is None:
            return "it is defined in an interactive session (no script file)"
        if not file.stem.isidentifier():
            return f"its script name {file.name!r} is not a Python module name"
    return None


def warn_if_unreferenceable(obj: Any, owner: str) -> None:
    """Say once per class or routing function, when a file is written, that it will not
    load elsewhere; `owner` says who uses it ("Step 'name'")."""
    reason = why_unreferenceable(obj)
    key = (obj.__module__, obj.__qualname__)
    if reason is None or key in _warned:
        return
    _warned.add(key)
    kind = "class" if isinstance(obj, type) else "routing function"
    warnings.warn(
        f"{owner}: {kind} {obj.__qualname__} cannot be referenced from pipeline.yaml "
        f"because {reason}, so `stillhouse pipeline run --config` cannot load this file. "
        f"Define the {kind} at module level in an importable module or a script whose name "
        "is a module name.",
        stacklevel=4,
    )


def _script_type_infos(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The `type_info` of every step and routing function the file names by a script."""
    pipeline = data.get("pipeline") or {}
    steps = pipeline.get("steps") or []
    infos = [entry.get("step", {}).get("type_info") for entry in steps if isinstance(entry, dict)]
    routings = pipeline.get("routing_batch_functions") or []
    infos += [entry.get("type_info") for entry in routings if isinstance(entry, dict)]
    return [info for info in infos if isinstance(info, dict) and info.get("file")]


def relativize_files(data: dict[str, Any], directory: str | os.PathLike[str]) -> None:
    """Make recorded script paths relative to the folder the file is written to."""
    for info in _script_type_infos(data):
        with contextlib.suppress(ValueError):  # another drive (Windows): keep it absolute
            info["file"] = os.path.relpath(info["file"], Path(directory).resolve())


def absolutize_files(data: dict[str, Any], directory: str | os.PathLike[str]) -> None:
    """Resolve recorded script paths against the folder the file was read from."""
    for info in _script_type_infos(data):
        info["file"] = str((Path(directory) / info["file"]).resolve())


def make_importable(type_info: dict[str, Any]) -> None:
    """Let `import <module>` find the script a file names (`type_info["file"]`).

    The running script itself is registered under its module name, so its classes
    resolve to the very objects the script defined. Otherwise the script's folder goes
    on `sys.path` (spawned workers inherit it). Importing runs the script's top level:
    code under `if __name__ == "__main__":` does not run."""
    module, file = type_info.get("module"), type_info.get("file")
    if not module or not file or module in sys.modules:
        return
    path = Path(file).resolve()
    if path == _main_file():
        sys.modules[module] = sys.modules["__main__"]
        return
    if not path.is_file():
        return  # the import fails and the error names the module; the file is in type_info
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
