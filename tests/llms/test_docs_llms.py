"""Every Python block of docs/llms.md runs, in order, as one script (as a reader would)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Pipelines need the executors, the cache and the results packages beside core and llms.
pytest.importorskip("stillhouse.executors")
pytest.importorskip("stillhouse.distiset")

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.mark.timeout(180)
def test_llms_page_runs(tmp_path: Path) -> None:
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(BLOCK.findall((ROOT / "docs/llms.md").read_text("utf-8"))), "utf-8")
    env = {**os.environ, "STILLHOUSE_CACHE_DIR": str(tmp_path / "cache"), "STILLHOUSE_PROGRESS": "0",
           "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_BASE_URL", None)
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
