"""LoadDataFromHub against a Hub served on 127.0.0.1 (see conftest.py)."""

from __future__ import annotations

import pytest

from stillhouse.core.testing import run_generator
from stillhouse.steps import LoadDataFromHub
from tests.steps.conftest import parquet_bytes

pytestmark = pytest.mark.timeout(60)

ROWS = [{"instruction": f"question {i}", "id": i} for i in range(10)]


def _publish(hub, rows=ROWS, repo="tester/mini"):
    return hub.publish(repo, {
        "README.md": b"---\nlicense: mit\n---\n# mini\n",
        "data/train-00000-of-00001.parquet": parquet_bytes(rows),
        "data/test-00000-of-00001.parquet": parquet_bytes(rows[:3]),
    })


@pytest.mark.parametrize("streaming", [False, True])
def test_loads_a_split_in_batches(hub, streaming):
    _publish(hub)
    loader = LoadDataFromHub(repo_id="tester/mini", split="train", batch_size=4, streaming=streaming)
    batches = run_generator(loader)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [row for b in batches for row in b] == ROWS
    assert loader.outputs == ["instruction", "id"]
    assert not hub.unhandled
