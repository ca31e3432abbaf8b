"""The throwaway virtual environment distilabel 1.5.3 runs from.

distilabel is never a dependency of the workspace: it lives in
`benchmarks/.venvs/distilabel` (ignored by git and ruff), made with `uv venv` (or
`python -m venv` without uv) and filled from the package registry. `requests` is
listed because distilabel 1.5.3 imports it without declaring it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venvs" / "distilabel"
VERSION = "1.5.3"
PACKAGES = [f"distilabel=={VERSION}", "requests", "pyarrow"]


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _has_distilabel(python: Path) -> bool:
    code = "import distilabel, requests, pyarrow; print(distilabel.__version__)"
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == VERSION


def _base_python() -> str:
    """A Python 3.11+ interpreter that is not the workspace's virtual environment."""
    return shutil.which("python3.11") or getattr(sys, "_base_executable", sys.executable)


def ensure(venv: Path = VENV, log=print) -> tuple[str | None, str]:
    """The venv's python and a note, or None and why distilabel cannot run here."""
    python = _python(venv)
    if python.exists() and _has_distilabel(python):
        return str(python), f"distilabel {VERSION} from {venv}"
    log(f"Making {venv} with distilabel {VERSION} (once; about a minute)...")
    uv = shutil.which("uv")
    try:
        if uv:
            _call([uv, "venv", "--quiet", "--clear", "--python", _base_python(), str(venv)])
            _call([uv, "pip", "install", "--quiet", "--python", str(python), *PACKAGES])
        else:
            _call([_base_python(), "-m", "venv", "--clear", str(venv)])
            _call([str(python), "-m", "pip", "install", "--quiet", *PACKAGES])
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"the distilabel venv could not be made ({exc}); skipping the distilabel column"
    if not _has_distilabel(python):
        return None, f"distilabel {VERSION} does not import from {venv}; skipping the distilabel column"
    return str(python), f"distilabel {VERSION} installed into {venv}"


def _call(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise subprocess.SubprocessError(f"`{' '.join(command[:4])} ...` failed: {done.stderr.strip()[-500:]}")
