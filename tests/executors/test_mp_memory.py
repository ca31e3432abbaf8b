"""An "mp" worker keeps the memory it freed (glibc): a batch does not fault in the
pages the batch before it gave back to the kernel."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
from executor_testkit import PageFaults, run_tasks

from stillhouse.core.engine import RunContext, Task

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
        reason="the thresholds are glibc's mallopt",
    ),
]

TEXT = "".join(chr(97 + i * 7 % 26) for i in range(4096))


def _faults_per_batch(make_executor) -> float:
    """Mean page faults of the worker per batch of 1,000 rows x 1 KB, after warm-up."""
    executor = make_executor("mp", start_method="fork")
    executor.start([PageFaults(name="faults")], RunContext())
    stamps = []
    for index in range(30):  # one at a time: each batch is freed before the next comes
        rows = [{"x": i, "text": f"{index:06d}{i:06d}" + TEXT[i % 3000 :][:1012]} for i in range(1000)]
        got = run_tasks(executor, [Task("faults", (0, index), [rows])])
        stamps.append(got[0, index].rows[0]["faults"])
    executor.shutdown()
    return (stamps[-1] - stamps[9]) / 20


def test_a_worker_does_not_fault_in_each_batch_again(make_executor) -> None:
    # With glibc's defaults this measured about 700 faults per batch (the batch's 1 MB
    # of pages, given back and taken again); kept, it is a handful.
    assert _faults_per_batch(make_executor) < 50


def test_the_thresholds_are_what_tunes_it(make_executor, monkeypatch: pytest.MonkeyPatch) -> None:
    # A forked worker inherits this module as patched here: glibc's defaults.
    monkeypatch.setattr("stillhouse.executors._mp_worker.keep_freed_memory", lambda: False)
    assert _faults_per_batch(make_executor) > 100


def test_keep_freed_memory_reports_that_it_applied() -> None:
    # In a process of its own: this one's malloc stays as it was.
    code = "from stillhouse.executors._malloc import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True"
