"""`stillhouse pipeline info|run` on a pipeline file that names code to run (SPEC §6).

Through the real console script: each command refuses the file with a one-line error
that names what was refused, and the command the file tried to run never ran.
"""

from __future__ import annotations

import pytest

from tests.support.untrusted import untrusted_files

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.mark.parametrize("command", ["info", "run"])
@pytest.mark.parametrize("case", ["popen-step", "os-system-routing", "plain-function-step"])
def test_untrusted_file_is_refused_and_runs_nothing(cli, tmp_path, command, case):
    marker = tmp_path / "pwned"
    path = untrusted_files(tmp_path, marker)[case]
    done = cli("pipeline", command, "--config", str(path))
    assert done.returncode == 1
    assert not marker.exists(), f"`stillhouse pipeline {command}` on {case} ran code"
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "Traceback" not in done.stderr
    assert "check where the file came from" in lines[0]
    assert ("not a stillhouse" in lines[0]) or ("refused without importing it" in lines[0])
