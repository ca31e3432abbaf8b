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
