"""docs/executors.md: its Python blocks run, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "executors.md"


def test_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 3
    namespace: dict[str, object] = {"__name__": "docs_executors"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    registered: dict[str, type] = {}
    namespace["register_executors"](register=registered.__setitem__)
    assert registered == {"inline": namespace["InlineExecutor"]}
