"""The benchmark harness runs end to end (stillhouse and the plain loop, no distilabel)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["stillhouse-mp", "stillhouse-threaded", "plain"]

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_quick_startup_writes_results(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "benchmarks.run", "--quick", "--only", "startup", "--no-warmup",
        "--columns", ",".join(COLUMNS), "--results-dir", str(tmp_path),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr

    result = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    assert result["quick"] is True
    assert result["columns"] == COLUMNS
    assert {"cpu", "cores", "versions"} <= set(result["machine"])
    case = result["cases"]["startup-startup"]
    assert case["case"]["params"] == {"rows": 10, "batch": 50}
    for column in COLUMNS:
        stats = case["columns"][column]["stats"]
        assert stats["n"] == 1
        assert 0 < stats["min"] <= stats["median"] <= stats["max"]
        assert stats["rows"] == 10
        assert stats["peak_rss_bytes"] > 0
    assert set(case["ratios"]) == {"stillhouse-mp/plain", "stillhouse-threaded/plain"}
    assert [t["target"] for t in result["targets"]] == [
        "startup in run() (stillhouse-mp)", "startup in run() (stillhouse-threaded)",
    ]
    assert all(t["met"] in (True, False) for t in result["targets"])
    assert len(result["runs"]) == len(COLUMNS)
    assert (tmp_path / "latest.md").read_text(encoding="utf-8").startswith("# Benchmarks")


@pytest.mark.timeout(120)
def test_compare_runs_another_revision_beside_the_workspace(tmp_path: Path) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True, timeout=30).stdout.strip()
    command = [
        sys.executable, "-m", "benchmarks.run", "--quick", "--only", "startup", "--no-warmup",
        "--columns", "stillhouse-threaded", "--compare", "HEAD", "--results-dir", str(tmp_path),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr

    result = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    theirs = f"stillhouse-threaded@{commit}"
    assert result["columns"] == ["stillhouse-threaded", theirs]
    assert result["machine"]["compare"] == {"ref": "HEAD", "commit": commit}
    sources = {run["column"]: run["result"]["source"] for run in result["runs"]}
    assert sources["stillhouse-threaded"] == str(ROOT / "packages" / "core" / "src" / "stillhouse" / "core")
    assert not sources[theirs].startswith(str(ROOT)), "the compared revision ran the workspace's code"
    case = result["cases"]["startup-startup"]
    assert set(case["ratios"]) == {f"stillhouse-threaded/{theirs}"}
    startup = [t for t in result["targets"] if t["target"] == "startup in run() (stillhouse-threaded)"]
    assert startup[0]["before"][f"@{commit}"]["value"] == case["columns"][theirs]["stats"]["median"]
    assert f"stillhouse threaded @{commit}" in (tmp_path / "latest.md").read_text(encoding="utf-8")


@pytest.mark.timeout(120)
def test_replicas_timeline_splits_each_run() -> None:
    command = [sys.executable, "-m", "benchmarks.replicas_timeline", "--rows", "40", "--pairs", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    one, two, speedup, summary = done.stdout.splitlines()
    assert one.startswith("1 replica:  run ") and "[4 batches busy " in one  # 40 rows in batches of 10
    assert two.startswith("2 replicas: run ") and " + end " in two
    assert speedup.startswith("speed-up ") and summary.endswith("over 1 pairs")


@pytest.mark.timeout(120)
def test_cpu_split_names_the_threads_and_workers_of_each_run() -> None:
    command = [sys.executable, "-m", "benchmarks.cpu_split", "--rows", "4000", "--bound", "none,checkpoints"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = [line for line in done.stdout.splitlines() if not line.startswith(" ")]
    assert [line.split(":")[0] for line in runs] == [
        "mp, bound none", "mp, bound checkpoints", "threaded, bound none", "threaded, bound checkpoints",
    ]
    mp, threaded = done.stdout.split("threaded, bound none")[0], done.stdout.split("threaded, bound none")[1]
    assert mp.count("    workers: ") == 2 and all(
        len(line.split(", ")) == 3 for line in mp.splitlines() if line.startswith("    workers: ")
    ), "mp runs three worker processes here: the generator and two steps"
    assert "workers 0.00 s" in threaded and "    workers: " not in threaded  # threads, no processes


@pytest.mark.timeout(60)
def test_cpu_split_refuses_an_unknown_bound() -> None:
    command = [sys.executable, "-m", "benchmarks.cpu_split", "--bound", "zstd"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown --bound zstd; choose from none, compression, checkpoints" in done.stderr


@pytest.mark.timeout(120)
def test_llm_quota_runs_both_readings_side_by_side() -> None:
    command = [sys.executable, "-m", "benchmarks.llm_quota", "--rows", "30", "--concurrency", "4", "--repeat", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| 4 |")]
    assert [row[1] for row in rows] == ["paced", "unpaced"]
    assert all(row[2].startswith("30 ") and row[3].startswith("0 ") for row in rows)  # 30 answered, none failed


@pytest.mark.timeout(120)
def test_llm_record_opens_and_answers_every_call() -> None:
    command = [sys.executable, "-m", "benchmarks.llm_record", "--calls", "500"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("500 calls, ")
    assert [line.split(" | ")[0] for line in done.stdout.splitlines() if line.startswith("| workspace")] == [
        "| workspace", "| workspace"]
