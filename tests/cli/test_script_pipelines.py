"""A pipeline whose steps are defined in the user's script reruns from its pipeline.yaml,
from the cache, with the CLI (issue 19 item 11)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import textwrap
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest
import yaml

from stillhouse.core import Pipeline, StepInput, sample_n_steps, step
from stillhouse.core.errors import SerializationError
from stillhouse.core.steps import LoadDataFromDicts
from tests.cli.helpers import TIMEOUT, run_dir, table_rows
from tests.support.local_servers import http_server
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


def test_a_run_from_the_cli_keeps_the_script_in_its_pipeline_yaml(cli, script_run, tmp_path):
    """The CLI imports the script as module `my_pipeline`, not `__main__`: the run folder's
    pipeline.yaml must still name it by `file:`, so that file reruns the run, and a fully
    cached rerun leaves the file the script's run wrote as it was."""
    project, cached = script_run
    written = (cached / "pipeline.yaml").read_text()
    rerun = cli("pipeline", "run", "--config", str(project / "saved.yaml"))
    assert rerun.returncode == 0, rerun.stderr
    assert run_dir(rerun.stdout) == cached
    assert (cached / "pipeline.yaml").read_text() == written

    other = tmp_path / "other-cache"  # a run folder only the CLI wrote
    done = cli("pipeline", "run", "--config", str(project / "saved.yaml"), "--cache-dir", str(other))
    assert done.returncode == 0, done.stderr
    fresh = run_dir(done.stdout)
    assert fresh.name == cached.name  # the signature of the script's run
    info = _square(fresh / "pipeline.yaml")
    assert (fresh / info["file"]).resolve() == (project / "my_pipeline.py").resolve()
    again = cli("pipeline", "run", "--config", str(fresh / "pipeline.yaml"), "--cache-dir", str(other))
    assert again.returncode == 0, again.stderr
    assert "default: 6 rows" in again.stdout
    assert "resuming: square: reuse, because finished with the same signature" in again.stderr


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_a_remote_file_that_names_a_script_is_refused(cli, script_run, tmp_path):
    """A URL has no folder beside it: `file: my_pipeline.py` would be looked up in the
    current directory, where a script of that name is imported in its place."""
    project, _cached = script_run
    marker = tmp_path / "pwned"
    (tmp_path / "my_pipeline.py").write_text(  # the CLI's current directory
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('the local script ran')\n" + SCRIPT)
    with http_server(functools.partial(_QuietFiles, directory=str(project))) as url:
        done = cli("pipeline", "run", "--config", f"{url}/saved.yaml")
    assert done.returncode == 1, done.stdout
    error = done.stderr.splitlines()[0]
    assert error == (
        f"error: Step 'square' names my_pipeline.Square in the script 'my_pipeline.py' (`file:`), "
        f"but the pipeline file {url}/saved.yaml was read from a URL, and a script is only imported "
        "from the folder of a local pipeline file; nothing was imported. Download the file, its "
        "inline_data/ folder and its script 'my_pipeline.py' into one folder, and pass the local path: stillhouse pipeline run "
        "--config ./pipeline.yaml."
    )
    assert not marker.exists()


def test_the_dataset_cards_reproduce_steps_work_for_a_script_pipeline(cli, script_run, tmp_path):
    """The card of a pushed run cannot point `--config` at the Hub when the file names a
    script: it says what to download and edit, and its commands then run."""
    from stillhouse.distiset import create_distiset
    from stillhouse.distiset.card import render_card

    project, cached = script_run
    card = render_card(create_distiset(cached / "data"), "me/squares", hub_url="https://h",
                       pipeline_yaml=(cached / "pipeline.yaml").read_text(), script_name="my_pipeline.py")
    reproduce = card.split("## Reproduce", 1)[1].split("\n## ", 1)[0]
    assert "https://h/datasets/me/squares/raw/main/pipeline.yaml" not in reproduce
    assert ('hf download me/squares --repo-type dataset --include "pipeline.yaml" --include "inline_data/*" '
            '--include "my_pipeline.py" --local-dir squares') in reproduce
    assert "set each `file:` to the script's name" in reproduce
    [command] = [line for line in reproduce.splitlines() if line.startswith("stillhouse pipeline run")]
    assert command == 'stillhouse pipeline run --config "squares/pipeline.yaml"'

    # What the download brings (the pushed files), and the edit the card asks for.
    folder = tmp_path / "squares"
    shutil.copytree(cached / "inline_data", folder / "inline_data")
    shutil.copy(project / "my_pipeline.py", folder / "my_pipeline.py")
    text = (cached / "pipeline.yaml").read_text()
    text = re.sub(r"file: .*my_pipeline\.py", "file: my_pipeline.py", text)
    (folder / "pipeline.yaml").write_text(text)
    done = cli(*command.split()[1:3], "--config", "squares/pipeline.yaml", "--cache-dir", str(tmp_path / "reader"))
    assert done.returncode == 0, done.stderr
    assert "default: 6 rows" in done.stdout


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


def test_a_run_from_the_cli_keeps_the_routing_functions_script(cli, cli_env, tmp_path):
    """The run folder's pipeline.yaml of a run from the CLI names the script of the routing
    function, as the one of a run of the script does."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "routed.py").write_text(ROUTED.replace("    pipeline.run()\n", ""))
    saved = subprocess.run([sys.executable, "routed.py"], cwd=project, env=cli_env,
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert saved.returncode == 0, saved.stderr
    done = cli("pipeline", "run", "--config", str(project / "saved.yaml"), "--executor", "sync")
    assert done.returncode == 0, done.stderr
    cached = run_dir(done.stdout)
    assert cached.name == saved.stdout.split("Signature: ")[1].split()[0]
    (routing,) = yaml.safe_load((cached / "pipeline.yaml").read_text())["pipeline"]["routing_batch_functions"]
    assert (cached / routing["type_info"]["file"]).resolve() == (project / "routed.py").resolve()
    again = cli("pipeline", "run", "--config", str(cached / "pipeline.yaml"), "--executor", "sync")
    assert again.returncode == 0, again.stderr
    assert run_dir(again.stdout) == cached


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
