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
