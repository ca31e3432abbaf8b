"""Every Python block of the README and the guides runs (the packages test their own pages)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/getting-started.md", "docs/concepts.md", "docs/debugging.md",
         "docs/embedding.md", "docs/caching.md", "docs/migrating.md", "docs/index.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def blocks(page: str) -> list[str]:
    return BLOCK.findall((ROOT / page).read_text(encoding="utf-8"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)])
def test_python_blocks_run(page, tmp_path):
    # The blocks of one page run in order as one script, as a reader would run them.
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(blocks(page)), encoding="utf-8")
    env = {**os.environ, "STILLHOUSE_CACHE_DIR": str(tmp_path / "cache"), "STILLHOUSE_PROGRESS": "0",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
