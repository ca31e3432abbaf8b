"""Step classes and routing functions of the user's script in pipeline files (SPEC §6).

A file names them by module and by the script's path (`file:`). Loading the file makes
the script an imported module: the files written afterwards (what a run from the CLI
writes to its run folder) must still name the script. A file read from a URL has no
folder to find the script in: it is refused before anything is imported.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from stillhouse.core import Pipeline, sample_n_steps
from stillhouse.core.errors import SerializationError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.steps import Double

SCRIPT = textwrap.dedent('''
    import sys

    from stillhouse.core import Pipeline, StepInput, routing_batch_function, step
    from stillhouse.core.steps import LoadDataFromDicts


    @routing_batch_function
    def first_two(steps):
        return sorted(steps)[:2]


    @step(inputs=["x"], outputs=["x"])
    def Keep(inputs: StepInput):
        yield inputs


    with Pipeline(name="resaved", executor="sync") as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": 1}])
        load >> first_two >> [Keep(name=f"k{i}") for i in range(3)]

    if __name__ == "__main__":
        pipeline.save(sys.argv[1])
        print(pipeline.signature)
''')


def _script_infos(path: Path) -> list[dict]:
    """The `type_info` of every step and routing function of `path` that names the script."""
    spec = yaml.safe_load(path.read_text())["pipeline"]
    infos = [entry["step"]["type_info"] for entry in spec["steps"]]
    infos += [entry["type_info"] for entry in spec["routing_batch_functions"]]
    return [info for info in infos if info["module"] == "resaved_script"]


def test_a_file_loaded_with_its_script_is_saved_with_the_script_again(tmp_path: Path) -> None:
    """`stillhouse pipeline run --config` loads the file, which imports the script as
    module `resaved_script`; the run folder's pipeline.yaml is then written from this
    process. It names the script again (relative to where it is written), for the steps
    and the routing function, and the signature is the script's own."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "resaved_script.py").write_text(SCRIPT)
    saved = subprocess.run([sys.executable, "resaved_script.py", "saved.yaml"], cwd=project,
                           capture_output=True, text=True, timeout=120)
    assert saved.returncode == 0, saved.stderr
    assert len(_script_infos(project / "saved.yaml")) == 4  # three steps, one routing function
    try:
        loaded = Pipeline.from_yaml(project / "saved.yaml")
        assert type(loaded.dag.get_step("k0")).__module__ == "resaved_script"  # not __main__
        loaded.save(elsewhere / "again.yaml")
        assert loaded.signature == saved.stdout.strip()
    finally:
        sys.modules.pop("resaved_script", None)
        if str(project) in sys.path:
            sys.path.remove(str(project))
    infos = _script_infos(elsewhere / "again.yaml")
    assert [info["name"] for info in infos] == ["Keep", "Keep", "Keep", "first_two"]
    assert {info.get("file") for info in infos} == {"../project/resaved_script.py"}


@pytest.mark.parametrize("named_by", ["step", "routing"])
def test_a_file_from_a_url_that_names_a_script_is_refused_before_any_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named_by: str
) -> None:
    """`file:` is relative to the file's folder; a URL has none here. A script of that name
    in the current directory must not be imported in its place."""
    fsspec = pytest.importorskip("fsspec")
    marker = tmp_path / "pwned"
    (tmp_path / "decoy_steps.py").write_text(textwrap.dedent(f'''
        from pathlib import Path
        from stillhouse.core import StepInput, routing_batch_function, step
        Path({str(marker)!r}).write_text("the decoy ran")

        @step(inputs=["x"], outputs=["x"])
        def Decoy(inputs: StepInput):
            yield inputs

        @routing_batch_function
        def pick(steps):
            return steps
    '''))
    monkeypatch.chdir(tmp_path)
    with Pipeline(name="remote") as pipeline:
        LoadDataFromDicts(name="load", data=[{"x": 1}]) >> sample_n_steps(1) >> [Double(name="a"), Double(name="b")]
    data = pipeline.dump()
    if named_by == "step":
        data["pipeline"]["steps"][1]["step"]["type_info"] = {
            "module": "decoy_steps", "name": "Decoy", "file": "decoy_steps.py"}
        owner = r"Step 'a' names decoy_steps\.Decoy"
    else:
        data["pipeline"]["routing_batch_functions"][0]["type_info"] = {
            "module": "decoy_steps", "name": "pick", "kwargs": {}, "file": "decoy_steps.py"}
        owner = r"The routing function after step 'load' names decoy_steps\.pick"
    fs = fsspec.filesystem("memory")
    fs.pipe("/script-url/pipeline.yaml", yaml.safe_dump(data).encode())
    try:
        with pytest.raises(SerializationError) as caught:
            Pipeline.from_yaml("memory://script-url/pipeline.yaml")
    finally:
        fs.rm("/script-url", recursive=True)
    message = str(caught.value)
    assert "\n" not in message
    assert re.match(owner + r" in the script 'decoy_steps\.py' \(`file:`\), but the pipeline file "
                    r"memory://script-url/pipeline\.yaml was read from a URL", message), message
    assert ("Download the file and its script 'decoy_steps.py' into one folder, and pass the local "
            "path: stillhouse pipeline run --config ./pipeline.yaml.") in message
    assert not marker.exists() and "decoy_steps" not in sys.modules
