"""`stillhouse.core.memory`: the helper executors call in the processes they own.
What it changes is measured per executor (tests/executors/test_mp_memory.py,
tests/ray/test_executor.py); here, only whether it applies."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


def _in_a_fresh_interpreter(code: str) -> str:
    # In a process of its own: this one's malloc stays as it was.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the thresholds are glibc's mallopt",
)
def test_keep_freed_memory_reports_that_it_applied_on_glibc() -> None:
    assert _in_a_fresh_interpreter("from stillhouse.core.memory import keep_freed_memory; print(keep_freed_memory())") == "True"
