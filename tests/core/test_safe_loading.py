"""A pipeline file names only step classes and stillhouse routing functions (SPEC §6).

Anything else it names (`subprocess.Popen` as a step type, `os.system` as a routing
function, a plain function) is refused with a SerializationError naming it, and is
never called: no marker file appears. Standard-library names are refused before any
import. Arguments of routing factories go through pydantic validation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stillhouse.core import Pipeline, sample_n_steps
from stillhouse.core.errors import RoutingError, SerializationError
from stillhouse.core.routing import RoutingBatchFunction
from tests.support.untrusted import untrusted_files

CASES = [
    "popen-step", "os-system-step", "plain-function-step", "dunder-path-step",
    "os-system-routing", "plain-function-routing",
]
EXPECTED = {
    "popen-step": r"subprocess\.Popen, which was refused without importing it.*standard-library",
    "os-system-step": r"os\.system, which was refused without importing it.*standard-library",
    "plain-function-step": r"'keep' names tests\.support\.untrusted\.touch, which is not a stillhouse step class",
    "dunder-path-step": r"touch\.__call__.*not a plain \(non-dunder\) attribute path",
    "os-system-routing": r"routing function names os\.system, which was refused without importing it",
    "plain-function-routing": r"routing function tests\.support\.untrusted\.touch is not a stillhouse routing function",
}


@pytest.mark.parametrize("case", CASES)
def test_from_yaml_refuses_what_is_not_a_step_class_or_routing_function(tmp_path: Path, case: str) -> None:
    marker = tmp_path / "pwned"
    path = untrusted_files(tmp_path, marker)[case]
    with pytest.raises(SerializationError, match=EXPECTED[case]) as caught:
        Pipeline.from_yaml(path)
    assert "check where the file came from" in str(caught.value)
    assert not marker.exists(), f"loading {case} ran code"


def test_the_files_are_fine_apart_from_the_untrusted_name(tmp_path: Path) -> None:
    """The same files with the real names load: the refusal is about the name alone."""
    import yaml

    from tests.support.untrusted import _base

    path = tmp_path / "fine.yaml"
    path.write_text(yaml.safe_dump(_base()))
    assert Pipeline.from_yaml(path).dag.step_names == ["load", "keep", "also"]


def test_routing_factory_arguments_are_validated_by_pydantic() -> None:
    data = sample_n_steps(2).dump()
    data["type_info"]["kwargs"] = {"n": "2"}  # distilabel's layout: kwargs inside type_info
    assert RoutingBatchFunction.from_dump(data).dump()["type_info"]["kwargs"] == {"n": 2}
    data["type_info"]["kwargs"] = {"n": "rm -rf /"}
    with pytest.raises(RoutingError, match=r"sample_n_steps\(\) got n='rm -rf /': Input should be a valid integer"):
        RoutingBatchFunction.from_dump(data)
    data["type_info"]["kwargs"] = {"command": "touch x"}
    with pytest.raises(RoutingError, match=r"sample_n_steps\(\) got bad arguments"):
        RoutingBatchFunction.from_dump(data)


def test_a_decorated_routing_function_takes_no_arguments_from_the_file() -> None:
    from tests.support.untrusted import everything

    data = everything.dump()
    data["kwargs"] = {"anything": 1}
    with pytest.raises(SerializationError, match=r"takes no arguments.*\['anything'\]"):
        RoutingBatchFunction.from_dump(data)


SIDE_EFFECT = """
from pathlib import Path
Path({marker!r}).write_text("the module's top level ran")
{definition}
"""


def _file_naming(tmp_path: Path, module: str, name: str, file: str | None = None) -> Path:
    import yaml

    info = {"module": module, "name": name, **({"file": file} if file else {})}
    data = {"stillhouse": {"format_version": 1}, "pipeline": {
        "name": "untrusted", "steps": [{"name": "s", "step": {"type_info": info}}], "connections": []}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("by_file", [True, False], ids=["script-file", "importable-module"])
def test_a_module_that_does_not_define_the_name_is_never_imported(tmp_path: Path, monkeypatch, by_file: bool) -> None:
    """Importing runs a module's top level: a file may not make stillhouse import a
    module (a script beside it, any installed module) whose source lacks the name."""
    import sys

    marker, folder = tmp_path / "pwned", tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "helpers_untrusted.py").write_text(SIDE_EFFECT.format(marker=str(marker), definition="VALUE = 1"))
    if not by_file:
        monkeypatch.syspath_prepend(str(folder))
    path_before = list(sys.path)
    config = _file_naming(tmp_path, "helpers_untrusted", "NotAStep",
                          "elsewhere/helpers_untrusted.py" if by_file else None)
    with pytest.raises(SerializationError, match=r"refused without importing it: .*helpers_untrusted\.py does "
                                                 r"not define 'NotAStep' at its top level"):
        Pipeline.from_yaml(config)
    assert not marker.exists()
    assert sys.path == path_before  # the script's folder was not put on sys.path
    assert "helpers_untrusted" not in sys.modules


@pytest.mark.parametrize("definition", [
    "from os import system as NotAStep", "import os as NotAStep", "NotAStep = 1",
    "def NotAStep():\n    pass",
], ids=["import-from", "import", "constant", "plain-function"])
def test_a_script_that_binds_the_name_without_defining_a_step_is_never_imported(
    tmp_path: Path, definition: str
) -> None:
    """A script named by `file:` runs its top level when imported: the name must be bound
    by what could be a step (a class, a decorated function, a call's result), or a
    pipeline file could make stillhouse run any local script that imports something."""
    import sys

    marker = tmp_path / "pwned"
    (tmp_path / "binds_untrusted.py").write_text(SIDE_EFFECT.format(marker=str(marker), definition=definition))
    config = _file_naming(tmp_path, "binds_untrusted", "NotAStep", str(tmp_path / "binds_untrusted.py"))
    with pytest.raises(SerializationError, match=r"refused without importing it: .*binds_untrusted\.py does not "
                                                 r"define 'NotAStep' at its top level as a class, a decorated "
                                                 r"function or a call's result"):
        Pipeline.from_yaml(config)
    assert not marker.exists()
    assert "binds_untrusted" not in sys.modules


def test_a_script_that_defines_the_step_is_imported_as_before(tmp_path: Path) -> None:
    import sys

    marker = tmp_path / "ran"
    (tmp_path / "my_script_steps.py").write_text(SIDE_EFFECT.format(marker=str(marker), definition=(
        "from stillhouse.core import Step\n"
        "if True:\n"
        "    class MyStep(Step):\n"
        "        def process(self, inputs):\n"
        "            yield inputs\n")))
    try:
        loaded = Pipeline.from_yaml(_file_naming(tmp_path, "my_script_steps", "MyStep", "my_script_steps.py"))
        [name] = loaded.dag.step_names
        assert type(loaded.dag.get_step(name)).__name__ == "MyStep" and marker.exists()
    finally:
        sys.modules.pop("my_script_steps", None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
