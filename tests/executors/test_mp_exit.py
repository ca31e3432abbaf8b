"""A driver that ran a pipeline on "mp" and read its results exits cleanly.

The driver's last moments are where native threads bite: a thread of pyarrow (or of
ours) still calling into Python while the interpreter finalizes aborts the process
("terminate called without an active exception", SIGABRT) after a run that succeeded.
The driver here exits right after reading the results, where that window is widest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("stillhouse.distiset")
pytest.importorskip("stillhouse.cache")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRIVER = textwrap.dedent(
    """
    import sys
    import threading

    from stillhouse.core import Pipeline
    from stillhouse.core.steps import LoadDataFromDicts
    from stillhouse.core.testing import Identity, rows_of

    if __name__ == "__main__":
        with Pipeline(name="exit", cache_dir=sys.argv[1], executor="mp") as pipeline:
            loader = LoadDataFromDicts(data=[{"x": i} for i in range(60)], batch_size=10)
            loader >> Identity(name="same", input_batch_size=7)
        result = pipeline.run(use_cache=True, progress=False)
        assert [row["x"] for row in rows_of(result)] == list(range(60))
        receivers = [t.name for t in threading.enumerate() if t.name == "stillhouse-mp-receiver"]
        assert not receivers, f"the mp receiver outlived the run: {receivers}"
    """
)

RUNS = 3
"""The abort needed a thread to be late by a few milliseconds at exit: several drivers
give it several chances (a loaded machine gives it more)."""


@pytest.mark.timeout(400)
def test_a_driver_exits_with_code_0_after_an_mp_run_and_reading_its_results(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "STILLHOUSE_PROGRESS": "0"}
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    for run in range(RUNS):
        driver = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"cache-{run}")],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            _, err = driver.communicate(timeout=120)
        finally:
            driver.kill()
            driver.wait(10)
        assert "terminate called" not in err, err[-3000:]
        assert driver.returncode == 0, f"run {run}: exit code {driver.returncode}\n{err[-3000:]}"
