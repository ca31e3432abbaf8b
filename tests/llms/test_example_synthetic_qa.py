"""examples/synthetic-qa runs end to end against its FakeOpenAIServer, on threaded and mp."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Pipelines need the executors, the cache and the results packages beside core and llms.
pytest.importorskip("stillhouse.executors")
pytest.importorskip("stillhouse.distiset")

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("executor", ["threaded", "mp"])
def test_synthetic_qa_example(tmp_path: Path, executor: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    env.update(STILLHOUSE_CACHE_DIR=str(tmp_path / "cache"), STILLHOUSE_PROGRESS="0", QA_TOPICS="12",
               QA_EXECUTOR=executor, QA_OUT=str(tmp_path / "out"))
    done = subprocess.run([sys.executable, str(ROOT / "examples/synthetic-qa/pipeline.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    kept = int(done.stdout.strip().splitlines()[-1].split()[1])
    assert 0 < kept < 12  # the judge keeps some and drops some
    assert (tmp_path / "out").is_dir()
