"""Pipeline files a user edited by hand: every mistake is one line naming it (issue 19)."""

from __future__ import annotations

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _one_error(done) -> str:
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    error, hint = done.stderr.strip().splitlines()
    assert hint == "hint: run with --debug to see the traceback"
    return error


def test_invalid_yaml_names_the_line(cli, config):
    lines = config.read_text().splitlines()
    lines[3] = lines[3] + " ["  # an unclosed flow sequence on line 4
    config.write_text("\n".join(lines) + "\n")
    error = _one_error(cli("pipeline", "info", "--config", str(config)))
    assert "is not valid YAML/JSON: line " in error


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.update(pipline=d.pop("pipeline")),
         "unknown key 'pipline' in the top level. Did you mean 'pipeline'?"),
        (lambda d: d["pipeline"].update(conections=d["pipeline"].pop("connections")),
         "unknown key 'conections' in 'pipeline'. Did you mean 'connections'?"),
        (lambda d: d["pipeline"]["connections"][0].update(to=["doubel"]),
         "a connection names step 'doubel', which is not among the pipeline's steps"),
    ],
    ids=["top-level-key", "pipeline-key", "missing-step"],
)
def test_misspelt_keys_and_steps_are_named(cli, config, edit, expected):
    data = yaml.safe_load(config.read_text())
    edit(data)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    error = _one_error(cli("pipeline", "info", "--config", str(config)))
    assert expected in error
    assert "KeyError" not in error


def test_info_validates_the_executor_like_run(cli, config):
    data = yaml.safe_load(config.read_text())
    data["pipeline"]["executor"] = "mpp"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    error = _one_error(cli("pipeline", "info", "--config", str(config)))
    assert error.startswith("error: Unknown executor 'mpp' (named in ")
    assert "'threaded'" in error


def test_ctrl_c_after_ignore_cache_says_to_drop_it():
    import argparse

    from stillhouse.core.cli import _one_line

    plain = _one_line(KeyboardInterrupt(), argparse.Namespace(ignore_cache=False))
    assert plain == "interrupted. Finished work is cached: run the same command again to resume."
    ignoring = _one_line(KeyboardInterrupt(), argparse.Namespace(ignore_cache=True))
    assert "run the command again without --ignore-cache to resume" in ignoring
