"""`stillhouse pipeline run|info` and `stillhouse plugins list`, through the real console script."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from stillhouse_example_steps import Uppercase

from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.distiset import create_distiset
from tests.cli.helpers import SCRIPT, TIMEOUT, run_dir, table_rows
from tests.support.steps import NeedsParam, Slow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.mark.parametrize("executor", ["mp", "threaded", "sync"])
def test_run_prints_each_leaf_with_its_row_count(cli, config, executor):
    done = cli("pipeline", "run", "--config", str(config), "--executor", executor)
    assert done.returncode == 0, done.stderr
    assert "tag: 10 rows" in done.stdout
    assert "drop_odd: 5 rows" in done.stdout
    assert "Traceback" not in done.stderr


def test_run_honours_cache_dir_and_ignore_cache(cli, config, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    first = cli("pipeline", "run", "--config", str(config), "--cache-dir", str(elsewhere))
    assert first.returncode == 0, first.stderr
    assert run_dir(first.stdout).parent == elsewhere / "clidemo"
    again = cli("pipeline", "run", "--config", str(config), "--cache-dir", str(elsewhere),
                "--ignore-cache")
    assert again.returncode == 0, again.stderr
    summary = json.loads((run_dir(again.stdout) / "batch_manager.json").read_text())
    assert summary["steps"]["tag"]["cached_batches"] == 0  # recomputed, not read back


def test_param_sets_a_required_runtime_parameter(cli, tmp_path):
    with Pipeline(name="needs", executor="sync") as pipeline:
        LoadDataFromDicts(name="load", data=[{"x": i} for i in range(3)]) >> NeedsParam(name="gen")
    config = tmp_path / "needs.yaml"
    pipeline.save(config)

    missing = cli("pipeline", "run", "--config", str(config))
    assert missing.returncode == 1
    assert "temperature" in missing.stderr and "Traceback" not in missing.stderr

    done = cli("pipeline", "run", "--config", str(config), "--param", "gen.temperature=0.7")
    assert done.returncode == 0, done.stderr
    rows = create_distiset(run_dir(done.stdout) / "data")["default"]["train"].to_list()
    assert [row["temperature"] for row in rows] == [0.7, 0.7, 0.7]  # a float, read as YAML


def test_param_changes_the_batching_of_the_run(cli, config):
    done = cli("pipeline", "run", "--config", str(config), "--param", "double.input_batch_size=5")
    assert done.returncode == 0, done.stderr
    summary = json.loads((run_dir(done.stdout) / "batch_manager.json").read_text())
    assert summary["steps"]["double"]["batches"] == 2  # 10 rows in batches of 5, not of 3


def test_info_shows_params_and_their_overrides(cli, config):
    done = cli("pipeline", "info", "--config", str(config),
               "--param", "double.input_batch_size=7", "--param", "double.resources.replicas=2")
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert ["double", "Double", "normal", "7 (input_batch_size)", "2"] in rows
    assert ["load", "LoadDataFromDicts", "generator", "4 (batch_size)", "1"] in rows
    assert ["double", "tag, drop_odd", ""] in rows  # connections
    described = "How many rows each call of `process` receives."
    # step, parameter, type, default, value, optional, description
    replicas = "How many copies of the step run side by side (normal steps only)."
    assert ["load", "resources.replicas", "int", "1", "1", "yes", replicas] in rows
    assert ["double", "resources.replicas", "int", "1", "2", "yes", "(as above)"] in rows
    assert ["", "input_batch_size", "int", "50", "7", "yes", described] in rows  # double
    assert ["", "input_batch_size", "int", "50", "50", "yes", "(as above)"] in rows  # tag
    assert ["", "batch_size", "int", "50", "4", "yes", "How many rows each yielded batch holds."] in rows


def test_unknown_executor_is_one_line_listing_the_installed_ones(cli, config):
    done = cli("pipeline", "run", "--config", str(config), "--executor", "mpp")
    assert done.returncode == 1
    error, hint = done.stderr.strip().splitlines()
    assert error.startswith("error: Unknown executor 'mpp'")
    assert all(f"'{name}'" in error for name in ("mp", "sync", "threaded"))
    assert hint == "hint: run with --debug to see the traceback"


@pytest.mark.parametrize("where", ["top", "command"])
def test_debug_shows_the_traceback_wherever_it_is_given(cli, config, where):
    args = ["pipeline", "run", "--config", str(config), "--executor", "mpp"]
    args = ["--debug", *args] if where == "top" else [*args, "--debug"]
    done = cli(*args)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "UnknownExecutorError" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: Unknown executor 'mpp'")


def test_missing_config_file_is_a_clear_error(cli, tmp_path):
    done = cli("pipeline", "run", "--config", "no/such/pipeline.yaml")
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        "error: The pipeline file 'no/such/pipeline.yaml' does not exist. Pass the path of a "
        "pipeline.yaml written by Pipeline.save() (or by a run, in its cache folder)."
    )
    assert "Traceback" not in done.stderr


def test_a_config_that_is_not_utf8_or_cannot_be_fetched_is_a_clear_error(cli, tmp_path):
    binary = tmp_path / "pipeline.yaml"
    binary.write_bytes(b"\xff\xfepipeline: {}\n")
    done = cli("pipeline", "info", "--config", str(binary))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0] == (
        f"error: The pipeline file {str(binary)!r} is not UTF-8 text (byte 0: invalid start "
        "byte). Pass a pipeline.yaml written by Pipeline.save() (or by a run, in its cache folder)."
    )
    import socket

    with socket.socket() as sock:  # a port nothing listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/pipeline.yaml"
    done = cli("pipeline", "info", "--config", url)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"error: The pipeline file {url!r} could not be read (")
    assert first.endswith("Check the URL and that its server is reachable, or download the file and pass its path.")


def test_bad_param_and_bad_file_are_one_line_errors(cli, config, tmp_path):
    bad_param = cli("pipeline", "run", "--config", str(config), "--param", "double=3")
    assert bad_param.returncode == 1
    assert "is not STEP.FIELD=VALUE" in bad_param.stderr
    invalid_value = cli("pipeline", "info", "--config", str(config),
                        "--param", "double.input_batch_size=0")
    assert invalid_value.returncode == 1
    assert "input_batch_size: Input should be greater than 0" in invalid_value.stderr
    not_a_pipeline = tmp_path / "other.yaml"
    not_a_pipeline.write_text("just: a mapping\n")
    done = cli("pipeline", "info", "--config", str(not_a_pipeline))
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 2
    assert "is not a stillhouse pipeline file" in done.stderr


def test_plugins_list_shows_executors_and_the_example_step(cli):
    done = cli("plugins", "list")
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    registered = {(row[0], row[1]): row for row in rows if len(row) == 4}
    for executor in ("mp", "threaded", "sync"):
        assert "stillhouse-executors" in registered["executor", executor][3]
    step = registered["step", "Uppercase"]
    assert step[2] == "stillhouse_example_steps.steps.Uppercase"
    assert step[3] == "stillhouse-example-steps (stillhouse_example_steps.plugin)"
    plugins = {row[0]: row for row in rows if len(row) == 3}
    assert plugins["example-steps"][2] == "register_steps"
    assert "register_cli" in plugins["cache"][2]


def test_module_entry_point_runs_too(cli):
    done = cli("--version", module=True)
    assert done.returncode == 0
    assert done.stdout.startswith("stillhouse ")


def test_plugin_step_resolves_by_registered_name_alone(cli, tmp_path):
    with Pipeline(name="shout", executor="sync") as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"text": "hi"}, {"text": "there"}])
        load >> Uppercase(name="upper", columns=["text"])
    config: Path = tmp_path / "shout.yaml"
    pipeline.save(config)
    data = yaml.safe_load(config.read_text())
    upper = next(entry for entry in data["pipeline"]["steps"] if entry["name"] == "upper")
    upper["step"]["type_info"] = {"name": "Uppercase"}  # no module: the registry resolves it
    config.write_text(yaml.safe_dump(data, sort_keys=False))

    done = cli("pipeline", "run", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "default: 2 rows" in done.stdout
    rows = create_distiset(run_dir(done.stdout) / "data")["default"]["train"].to_list()
    assert [row["text"] for row in rows] == ["HI", "THERE"]


def test_ctrl_c_exits_130_with_one_line(cli_env, tmp_path, cache_dir):
    with Pipeline(name="slow", executor="threaded") as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(200)], batch_size=1)
        load >> Slow(name="slow", sleep=0.2, input_batch_size=1)
    config = tmp_path / "slow.yaml"
    pipeline.save(config)
    process = subprocess.Popen(
        [str(SCRIPT), "pipeline", "run", "--config", str(config)],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not list((cache_dir / "slow" / "steps").glob("slow-*/batches.log")):
            assert process.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert "error: interrupted. Finished work is cached" in stderr
    assert "Traceback" not in stderr


def test_repo_id_pushes_the_distiset(config, tmp_path, monkeypatch, capsys):
    """In-process, with the Hub call replaced: the CLI passes repo id and privacy through."""
    from stillhouse.core import cli
    from stillhouse.distiset import Distiset

    pushed: list[tuple[str, bool, list[str]]] = []
    monkeypatch.setenv("STILLHOUSE_PROGRESS", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")  # a push needs a token, checked before the run
    monkeypatch.setattr(
        Distiset, "push_to_hub",
        lambda self, repo_id, private=False: pushed.append((repo_id, private, sorted(self))),
    )
    argv = ["pipeline", "run", "--config", str(config), "--cache-dir", str(tmp_path / "c")]
    assert cli.main([*argv, "--private"]) == 1  # --private alone is a mistake
    assert "--private only applies to a push" in capsys.readouterr().err
    assert cli.main([*argv, "--repo-id", "me/clidemo", "--private"]) == 0
    assert pushed == [("me/clidemo", True, ["drop_odd", "tag"])]
    assert "Pushed to https://huggingface.co/datasets/me/clidemo" in capsys.readouterr().out
