"""How a pipeline file names a step class or routing function defined in the user's script.

A class (or an `@routing_batch_function`) defined in the script being run lives in
module `__main__`, a name no other process can import. Pipeline files name it by the
script's module name (`quickstart` for `quickstart.py`) and carry the script's path,
relative to the file (`type_info: {module: quickstart, name: CountWords, file:
../quickstart.py}`), so `stillhouse pipeline run --config` can import it; signatures
use the same module name, so a run from the script and a run from the CLI share their
cache. Once a pipeline file has had its script imported (the CLI, `Pipeline.from_yaml`),
the script is module `quickstart`, not `__main__`: the files this process writes still
name it by `file:` (`_imported_scripts`), so the run folder's `pipeline.yaml` of a run
from the CLI reproduces the run as well as the one of a run from the script. A file read
from a URL has no folder beside it to find a script in: one that names a script is
refused (`refuse_remote_scripts`).

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

from stillhouse.core import inline_data
from stillhouse.core.errors import SerializationError

_warned: set[tuple[str, str]] = set()
# The scripts pipeline files named by `file:` and `make_importable` made importable: a
# module imported from one of them is the user's script, recorded by `file:` again.
_imported_scripts: set[Path] = set()


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
    function): the script being run when it is `__main__`, or a script a pipeline file
    named (`make_importable`) that its module was imported from."""
    module = getattr(obj, "__module__", None)
    file = _main_file() if module == "__main__" else _imported_script(module)
    return str(file) if file is not None else None


def _imported_script(module: Any) -> Path | None:
    """The script module `module` was imported from, when a pipeline file named it."""
    origin = getattr(sys.modules.get(module) if isinstance(module, str) else None, "__file__", None)
    if not origin:
        return None
    path = Path(origin).resolve()
    return path if path in _imported_scripts else None


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


def script_references(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """`(owner, type_info)` of every step and routing function the file names by a script
    (`file:`); `owner` says who it is ("Step 'name'")."""
    pipeline = data.get("pipeline") if isinstance(data, dict) else None
    pipeline = pipeline if isinstance(pipeline, dict) else {}
    found: list[tuple[str, Any]] = []
    for entry in pipeline.get("steps") or []:
        if isinstance(entry, dict) and isinstance(entry.get("step"), dict):
            found.append((f"Step {str(entry.get('name'))!r}", entry["step"].get("type_info")))
    for entry in pipeline.get("routing_batch_functions") or []:
        if isinstance(entry, dict):
            owner = f"The routing function after step {str(entry.get('step'))!r}"
            found.append((owner, entry.get("type_info")))
    return [(owner, info) for owner, info in found if isinstance(info, dict) and info.get("file")]


def _script_type_infos(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The `type_info` of every step and routing function the file names by a script."""
    return [info for _owner, info in script_references(data)]


def refuse_remote_scripts(data: dict[str, Any], source: str) -> None:
    """Raise before anything is imported when the file read from URL `source` names a script.

    `file:` is relative to the file's folder, and a URL has no local folder: resolving it
    against the current directory would import whatever script of that name is there."""
    references = script_references(data)
    if not references:
        return
    owner, info = references[0]
    file = str(info["file"])
    names = sorted({Path(str(i["file"]).replace("\\", "/")).name for _owner, i in references})
    scripts = ", ".join(map(repr, names))
    edit = "" if all(str(i["file"]) in names for _owner, i in references) else (
        f", each `file:` set to the script's name (the file says {file!r})"
    )
    steps = (data.get("pipeline") or {}).get("steps") or []
    inline = any(  # rows the file keeps in `inline_data/` beside it: download them too
        inline_data.is_reference(value)
        for entry in steps if isinstance(entry, dict) and isinstance(entry.get("step"), dict)
        for value in entry["step"].values()
    )
    raise SerializationError(
        f"{owner} names {info.get('module')}.{info.get('name')} in the script {file!r} "
        f"(`file:`), but the pipeline file {source} was read from a URL, and a script is "
        "only imported from the folder of a local pipeline file; nothing was imported. "
        f"Download the file{', its inline_data/ folder' if inline else ''} and its "
        f"script{'s' if len(names) > 1 else ''} {scripts} into one folder{edit}, and pass the "
        "local path: stillhouse pipeline run --config ./pipeline.yaml."
    )


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
    code under `if __name__ == "__main__":` does not run. The script is remembered, so
    the files this process writes name what its module defines by `file:` again
    (`script_file`)."""
    module, file = type_info.get("module"), type_info.get("file")
    if not module or not file:
        return
    path = Path(file).resolve()
    if path.is_file():  # a module imported from it is this script: `script_file` says so
        _imported_scripts.add(path)
    if module in sys.modules:
        return
    if path == _main_file():
        sys.modules[module] = sys.modules["__main__"]
        return
    if not path.is_file():
        return  # the import fails and the error names the module; the file is in type_info
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
