"""Inline data in runs: `pipeline.yaml` of a run stays small, its rows sit beside it
once, a cached rerun rewrites neither, and the run's `pipeline.yaml` reruns (from
Python and from `stillhouse pipeline run --config`) with its data, from the cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stillhouse.core import Pipeline, make_generator_step
from stillhouse.core.steps import KeepColumns, LoadDataFromDicts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"id": i, "text": f"row number {i}"} for i in range(20_000)]


def build(cache_dir, how="step"):
    with Pipeline(name="inline-run", cache_dir=str(cache_dir), executor="mp") as pipeline:
        keep = KeepColumns(name="keep", columns=["id"], input_batch_size=1000)
        if how == "step":
            LoadDataFromDicts(name="load", data=ROWS, batch_size=1000) >> keep
        elif how == "make_generator_step":
            make_generator_step(ROWS, batch_size=1000) >> keep
    return pipeline


def stamps(run_dir: Path) -> dict[str, tuple[int, int]]:
    files = [run_dir / "pipeline.yaml", *sorted((run_dir / "inline_data").glob("*"))]
    return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}


def computed(pipeline):
    return {row["step"] for row in pipeline.last_run_summary if row["started_worker"]}


@pytest.mark.parametrize("how", ["step", "make_generator_step", "dataset"])
def test_small_yaml_data_beside_it_and_a_cached_rerun_rewrites_nothing(tmp_path, how):
    def run():
        pipeline = build(tmp_path, how)
        dataset = ROWS if how == "dataset" else None
        result = pipeline.run(progress=False, dataset=dataset)
        return pipeline, result

    pipeline, result = run()
    assert result["default"]["train"]["id"] == list(range(len(ROWS)))
    run_dir = Path(pipeline.run_dir)
    assert (run_dir / "pipeline.yaml").stat().st_size < 50_000
    assert [f.suffix for f in (run_dir / "inline_data").iterdir()] == [".parquet"]  # SPEC §6
    before = stamps(run_dir)

    pipeline, result = run()
    assert computed(pipeline) == set()
    assert result["default"]["train"]["id"] == list(range(len(ROWS)))
    assert stamps(run_dir) == before


def test_the_run_yaml_reloads_with_its_data_and_is_answered_from_the_cache(tmp_path):
    pipeline = build(tmp_path)
    pipeline.run(progress=False)
    config = Path(pipeline.run_dir) / "pipeline.yaml"

    reloaded = Pipeline.from_yaml(config)
    assert reloaded.dag.get_step("load").data == ROWS
    reloaded.cache_dir = str(tmp_path)
    result = reloaded.run(progress=False)
    assert computed(reloaded) == set()  # same data hash: same signature
    assert len(result["default"]["train"]) == len(ROWS)

    env = {**os.environ, "STILLHOUSE_PROGRESS": "0", "STILLHOUSE_CACHE_DIR": str(tmp_path / "cli"),
           "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH")] if p)}
    script = Path(sys.executable).parent / "stillhouse"
    done = subprocess.run([str(script), "pipeline", "run", "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"default: {len(ROWS)} rows" in done.stdout
