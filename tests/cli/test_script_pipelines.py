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

from stillhouse.core import Pipeline, StepInput, step
from stillhouse.core.steps import LoadDataFromDicts
from tests.cli.helpers import TIMEOUT, run_dir, table_rows

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
