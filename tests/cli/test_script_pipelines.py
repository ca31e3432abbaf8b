"""A pipeline whose steps are defined in the user's script reruns from its pipeline.yaml,
from the cache, with the CLI (issue 19 item 11)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from stillhouse.core import Pipeline, StepInput, sample_n_steps, step
from stillhouse.core.errors import SerializationError
from stillhouse.core.steps import LoadDataFromDicts
from tests.cli.helpers import TIMEOUT, run_dir, table_rows
from tests.support.steps import Double

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCRIPT = textwrap.dedent('''
    from stillhouse.core import Pipeline, StepInput, step
    from stillhouse.core.steps import LoadDataFromDicts


    POWER = 2  # a constant and a helper the step reads: signed alike from the script and the CLI


    def power(x):
        return x ** POWER


    @step(inputs=["x"], outputs=["y"])
    def Square(inputs: StepInput):
        yield [{**row, "y": power(row["x"])} for row in inputs]


    with Pipeline(name="scripted", executor="mp") as pipeline:
        LoadDataFromDicts(name="load", data=[{"x": i} for i in range(6)], batch_size=2) >> Square(name="square")

    if __name__ == "__main__":
        pipeline.run()
        pipeline.save("saved.yaml")
        print("Cache:", pipeline.run_dir)
''')


@pytest.fixture
def script_run(tmp_path, cli_env):
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_pipeline.py").write_text(SCRIPT)
    env = {**cli_env, "STILLHOUSE_START_METHOD": "spawn"}  # workers import the script too
    done = subprocess.run([sys.executable, "my_pipeline.py"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return project, run_dir(done.stdout)


def _square(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    return next(e["step"]["type_info"] for e in data["pipeline"]["steps"] if e["name"] == "square")


def test_the_cached_file_names_the_script_and_reruns_from_the_cache(cli, script_run):
    project, cached = script_run
    info = _square(cached / "pipeline.yaml")
    assert info["module"] == "my_pipeline" and info["name"] == "Square"
    assert (cached / info["file"]).resolve() == (project / "my_pipeline.py").resolve()

    done = cli("pipeline", "run", "--config", str(cached / "pipeline.yaml"))
    assert done.returncode == 0, done.stderr
    assert "default: 6 rows" in done.stdout
    # Same signatures from the CLI as from the script: nothing recomputed.
    assert "resuming: square: reuse, because finished with the same signature" in done.stderr
    assert re.search(r"\nsquare .*  cached\n", done.stderr.split("Run summary")[1])


def test_a_saved_file_beside_the_script_moves_with_it(cli, script_run, tmp_path):
    project, _cached = script_run
    assert _square(project / "saved.yaml")["file"] == "my_pipeline.py"
    moved = shutil.move(project, tmp_path / "elsewhere")
    info = cli("pipeline", "info", "--config", str(Path(moved) / "saved.yaml"))
    assert info.returncode == 0, info.stderr
    assert ["square", "Square", "normal", "50 (input_batch_size)", "1"] in table_rows(info.stdout)


def test_a_missing_script_is_named(cli, script_run):
    project, cached = script_run
    (project / "my_pipeline.py").unlink()
    done = cli("pipeline", "info", "--config", str(cached / "pipeline.yaml"))
    assert done.returncode == 1
    assert "cannot resolve my_pipeline.Square" in done.stderr
    assert "my_pipeline.py" in done.stderr


def test_a_class_that_cannot_be_referenced_is_named_when_the_file_is_written(tmp_path):
    @step(inputs=["x"], outputs=["y"])
    def Local(inputs: StepInput):
        yield inputs

    with Pipeline(name="local") as pipeline:
        LoadDataFromDicts(data=[{"x": 1}]) >> Local(name="local_step")
    with pytest.warns(UserWarning, match=r"Step 'local_step': class .*Local cannot be referenced "
                                         r"from pipeline.yaml because it is defined inside a function"):
        pipeline.save(tmp_path / "local.yaml")


ROUTED = textwrap.dedent('''
    from stillhouse.core import Pipeline, StepInput, routing_batch_function, step
    from stillhouse.core.steps import LoadDataFromDicts


    @routing_batch_function
    def first_two(steps):
        return sorted(steps)[:2]


    @step(inputs=["x"], outputs=["x"])
    def Ident(inputs: StepInput):
        yield inputs


    with Pipeline(name="routed", executor="mp") as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(4)])
        load >> first_two >> [Ident(name=f"k{i}") for i in range(3)]

    if __name__ == "__main__":
        pipeline.run()
        pipeline.save("saved.yaml")
        print("Signature:", pipeline.signature)
        print("Cache:", pipeline.run_dir)
''')


def test_a_routing_function_of_the_script_reruns_from_the_cache(cli, cli_env, tmp_path):
    """A `@routing_batch_function` defined in the script is named like the script's step
    classes (module and file), so the CLI loads it, and signs the pipeline alike."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "routed.py").write_text(ROUTED)
    env = {**cli_env, "STILLHOUSE_START_METHOD": "spawn"}
    done = subprocess.run([sys.executable, "routed.py"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    cached = run_dir(done.stdout)
    for path in (cached / "pipeline.yaml", project / "saved.yaml"):
        (routing,) = yaml.safe_load(path.read_text())["pipeline"]["routing_batch_functions"]
        assert routing["type_info"]["module"] == "routed" and routing["type_info"]["name"] == "first_two"
        assert (path.parent / routing["type_info"]["file"]).resolve() == (project / "routed.py").resolve()

    rerun = cli("pipeline", "run", "--config", str(cached / "pipeline.yaml"))
    assert rerun.returncode == 0, rerun.stderr
    assert run_dir(rerun.stdout) == cached  # the same pipeline signature: the same run folder
    assert "resuming: k0: reuse, because finished with the same signature" in rerun.stderr
    assert cli("pipeline", "info", "--config", str(project / "saved.yaml")).returncode == 0


def test_a_script_function_that_is_not_a_routing_function_is_refused(tmp_path, monkeypatch):
    """`file:` makes the script importable, but only a `@routing_batch_function` it
    defines may be loaded: any other function is refused before it is called."""
    (tmp_path / "not_routing_script.py").write_text(textwrap.dedent('''
        import functools

        @functools.cache
        def pick(steps):
            raise SystemExit("called")
    '''))
    with Pipeline(name="routed") as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": 1}])
        load >> sample_n_steps(1) >> [Double(name="a"), Double(name="b")]
    data = pipeline.dump()
    data["pipeline"]["routing_batch_functions"][0]["type_info"] = {
        "module": "not_routing_script", "name": "pick", "kwargs": {}, "file": "not_routing_script.py"}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script's folder goes on it
    monkeypatch.delitem(sys.modules, "not_routing_script", raising=False)
    with pytest.raises(SerializationError, match=r"not_routing_script\.pick is not a stillhouse routing "
                                                 r"function.*it was not called"):
        Pipeline.from_yaml(tmp_path / "pipeline.yaml")
