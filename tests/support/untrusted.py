"""Pipeline files that try to run code when they are loaded, for the safe-loading tests.

Each file names something that is not a stillhouse step class or routing function
(`subprocess.Popen`, `os.system`, a plain function) with arguments that would create a
marker file if it were ever called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stillhouse.core import Pipeline, routing_batch_function
from stillhouse.core.steps import KeepColumns, LoadDataFromDicts


def touch(path: str) -> None:
    """A plain function a file might name as a step type: never to be called by a load."""
    Path(path).touch()


@routing_batch_function
def everything(steps: list[str]) -> list[str]:
    return steps


def _base() -> dict[str, Any]:
    with Pipeline(name="untrusted", executor="sync") as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"a": 1}])
        load >> everything >> [KeepColumns(name="keep", columns=["a"]), KeepColumns(name="also", columns=["a"])]
    return pipeline.dump()


def _step_type(data: dict[str, Any], module: str, name: str, **fields: Any) -> dict[str, Any]:
    data["pipeline"]["steps"][1]["step"] = {**fields, "type_info": {"module": module, "name": name}}
    return data


def _routing(data: dict[str, Any], module: str, name: str, **kwargs: Any) -> dict[str, Any]:
    data["pipeline"]["routing_batch_functions"][0].update(
        type_info={"module": module, "name": name}, kwargs=kwargs
    )
    return data


def untrusted_files(folder: Path, marker: Path) -> dict[str, Path]:
    """`{case: path of a pipeline file}`; loading any of them must leave `marker` absent."""
    command = f"touch {marker}"
    cases = {
        "popen-step": _step_type(_base(), "subprocess", "Popen", args=["touch", str(marker)]),
        "os-system-step": _step_type(_base(), "os", "system", command=command),
        "plain-function-step": _step_type(_base(), __name__, "touch", path=str(marker)),
        "dunder-path-step": _step_type(_base(), __name__, "touch.__call__", path=str(marker)),
        "os-system-routing": _routing(_base(), "os", "system", command=command),
        "plain-function-routing": _routing(_base(), __name__, "touch", path=str(marker)),
    }
    paths = {}
    for case, data in cases.items():
        path = folder / f"{case}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        paths[case] = path
    return paths
