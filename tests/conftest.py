"""Make `tests.support` importable in this process and in spawned workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# Children started with "spawn"/"forkserver" re-import step classes by module name.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in [ROOT, os.environ.get("PYTHONPATH", "")] if p
)


def pytest_sessionstart(session) -> None:
    """Compile the workspace's sources and these tests to bytecode, once, as an install
    would: where PYTHONDONTWRITEBYTECODE is set (this machine), every process the suite
    starts (a spawned worker, a Ray actor, a CLI run, a killed and resumed driver) would
    otherwise compile stillhouse from source again. The installed packages are compiled
    by `uv sync` (`compile-bytecode` in pyproject.toml)."""
    import compileall

    for folder in (Path(ROOT) / "packages", Path(ROOT) / "tests"):
        compileall.compile_dir(folder, quiet=1, workers=1)
