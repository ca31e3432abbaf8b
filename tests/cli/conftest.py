"""Run the real `stillhouse` console script in a subprocess, against a temporary cache."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.helpers import ROOT, SCRIPT, TIMEOUT, build

Cli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cli_env(cache_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "STILLHOUSE_PROGRESS": "0",
        "STILLHOUSE_CACHE_DIR": str(cache_dir),
        "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH")] if p),
        "COLUMNS": "250",  # tables must not fold the names the tests look for
    }


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> Cli:
    """`cli("pipeline", "info", ...)` -> the finished process (stdout/stderr as text)."""

    def run(*args: str, module: bool = False, stdin: str | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "stillhouse.core.cli"] if module else [str(SCRIPT)]
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=TIMEOUT, env=cli_env,
            cwd=tmp_path, input=stdin if stdin is not None else "",
        )

    return run


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    build().save(path)
    return path
