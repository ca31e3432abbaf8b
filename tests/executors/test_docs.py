"""docs/executors.md: its Python blocks run, in order, in one namespace, and the executor
it walks through passes the executor conformance suite, as the page says it would."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "executors.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)

# Run at import: the page's conformance class is collected below as a test class.
namespace: dict[str, object] = {"__name__": "docs_executors"}
for block in BLOCKS:
    exec(compile(block, str(DOC), "exec"), namespace)

TestDocsExecutorConformance = namespace["TestThreadPerReplica"]
pytestmark = pytest.mark.timeout(120)


def test_python_blocks_run() -> None:
    assert len(BLOCKS) == 4
    registered: dict[str, type] = {}
    namespace["register_executors"](register=registered.__setitem__)  # type: ignore[operator]
    assert registered == {"thread-per-replica": namespace["ThreadPerReplica"]}
