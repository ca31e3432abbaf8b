"""Benchmarks of issue 17: inline data out of pipeline.yaml, and a file loader's memory.

```bash
uv run --no-sync python -m benchmarks.steps_bench                 # full sizes
uv run --no-sync python -m benchmarks.steps_bench --quick         # 10x smaller, a smoke run
uv run --no-sync python -m benchmarks.steps_bench --only inline   # inline | cached | files
```

- `inline`: 100k rows `LoadDataFromDicts(batch_size=1000) >> AddOne >> AddOne` on "mp",
  stillhouse vs distilabel 1.5.3 (its venv, see venv.py), `use_cache=False`: seconds of
  `run()` and the size of the `pipeline.yaml` the run wrote. Target: >= 10x, < 50 KB.
- `cached`: 1M rows inline, a finished run run again with `use_cache=True` in a fresh
  process: seconds of `run()` (hashing the rows included) and of building the pipeline.
  Target: run() < 2 s; and the run folder's files are not rewritten.
- `files`: `LoadDataFromFileSystem` over a jsonl file of 100k and of 1M rows >> two
  trivial steps on "mp": peak RSS summed over the run's processes. Target: 1M within
  1.2x of 100k.

Each measurement is a fresh process (`--child SPEC`), sampled by the harness's
`TreeSampler`; the machine's load is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# -- the child: one run in a fresh process -------------------------------------------------


def _child(spec: dict[str, Any]) -> None:
    os.environ["BENCH_ENGINE"] = spec["engine"]
    from benchmarks import pipelines, work
    from benchmarks.worker import MARKER

    started = time.perf_counter()
    options = {"executor": "mp"} if spec["engine"] == "stillhouse" else {}
    with pipelines.Pipeline(name=spec["name"], cache_dir=spec["cache_dir"], **options) as pipeline:
        if spec["source"] == "dicts":
            source = pipelines.LoadDataFromDicts(
                data=work.make_rows(0, spec["rows"]), batch_size=spec["batch"]
            )
        else:
            from stillhouse.steps import LoadDataFromFileSystem

            source = LoadDataFromFileSystem(data_files=spec["data_files"], batch_size=spec["batch"])
        first = pipelines.AddOne(name="first", column="a", input_batch_size=spec["batch"])
        second = pipelines.AddOne(name="second", column="b", input_batch_size=spec["batch"])
        source >> first >> second
    built = time.perf_counter()
    kwargs: dict[str, Any] = {"use_cache": spec["mode"] != "fresh"}
    if spec["engine"] == "stillhouse":
        kwargs["progress"] = False
    distiset = pipeline.run(**kwargs)
    finished = time.perf_counter()
    rows = sum(len(splits["train"]) for splits in distiset.values())
    result = {"seconds": finished - built, "build_seconds": built - started, "rows": rows}
    summary = getattr(pipeline, "last_run_summary", None) or []
    result["computed_steps"] = [r["step"] for r in summary if r.get("started_worker")]
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


# -- the parent ----------------------------------------------------------------------------


def _measure(python: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    from benchmarks.harness import TreeSampler, worker_env
    from benchmarks.worker import MARKER

    env = worker_env({"DISTILABEL_CACHE_DIR": spec["cache_dir"]})
    process = subprocess.Popen(
        [python, "-m", "benchmarks.steps_bench", "--child", json.dumps(spec)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    sampler = TreeSampler(process.pid)
    sampler.start()
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        sampler.stop()
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith(MARKER)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{spec['engine']} {spec['name']} failed:\n{err.decode()[-2000:]}")
    result = json.loads(lines[-1][len(MARKER):])
    result["peak_rss_mb"] = round(sampler.peak_rss / 2**20, 1)
    return result


def _yaml_bytes(cache_dir: Path) -> int:
    found = sorted(cache_dir.rglob("pipeline.yaml"))
    return found[0].stat().st_size if found else -1


def _stamps(cache_dir: Path) -> dict[str, int]:
    files = [*cache_dir.rglob("pipeline.yaml"), *cache_dir.rglob("inline_data/*.json")]
    return {str(f): f.stat().st_mtime_ns for f in files}


def bench_inline(rows: int, scratch: Path, timeout: float) -> list[str]:
    from benchmarks.venv import ensure

    lines = []
    distilabel_python, note = ensure(log=lambda m: None)
    engines = [("stillhouse", sys.executable)]
    if distilabel_python:
        engines.append(("distilabel", distilabel_python))
    else:
        lines.append(f"  distilabel: {note}")
    seconds = {}
    for engine, python in engines:
        cache = scratch / f"inline-{engine}"
        spec = {"engine": engine, "name": "inline", "source": "dicts", "rows": rows, "batch": 1000,
                "cache_dir": str(cache), "mode": "fresh"}
        result = _measure(python, spec, timeout)
        seconds[engine] = result["seconds"]
        lines.append(f"  {engine:<11} run() {result['seconds']:.2f} s, build {result['build_seconds']:.2f} s, "
                     f"pipeline.yaml {_yaml_bytes(cache) / 1000:.1f} KB, rows {result['rows']:,}, "
                     f"peak RSS {result['peak_rss_mb']} MB")
    if len(seconds) == 2:
        lines.append(f"  distilabel / stillhouse: {seconds['distilabel'] / seconds['stillhouse']:.1f}x")
    return lines


def bench_cached(rows: int, scratch: Path, timeout: float) -> list[str]:
    cache = scratch / "cached"
    spec = {"engine": "stillhouse", "name": "cached", "source": "dicts", "rows": rows, "batch": 1000,
            "cache_dir": str(cache), "mode": "prime"}
    first = _measure(sys.executable, spec, timeout)
    before = _stamps(cache)
    again = _measure(sys.executable, {**spec, "mode": "cached"}, timeout)
    rewritten = sorted(k for k, v in _stamps(cache).items() if before.get(k) != v)
    return [
        f"  first run() {first['seconds']:.2f} s; cached rerun run() {again['seconds']:.2f} s "
        f"(build {again['build_seconds']:.2f} s), steps computed {again['computed_steps']}, "
        f"pipeline.yaml {_yaml_bytes(cache) / 1000:.1f} KB, files rewritten: {len(rewritten)}",
    ]


def bench_files(sizes: list[int], scratch: Path, timeout: float) -> list[str]:
    from benchmarks import work

    lines, peaks = [], {}
    for rows in sizes:
        path = scratch / f"rows-{rows}.jsonl"
        with path.open("w") as handle:
            for start in range(0, rows, 10_000):
                for row in work.make_rows(start, min(10_000, rows - start)):
                    handle.write(json.dumps(row) + "\n")
        spec = {"engine": "stillhouse", "name": f"files-{rows}", "source": "files", "rows": rows,
                "batch": 1000, "data_files": str(path), "cache_dir": str(scratch / f"files-{rows}"),
                "mode": "fresh"}
        result = _measure(sys.executable, spec, timeout)
        peaks[rows] = result["peak_rss_mb"]
        lines.append(f"  {rows:>9,} rows ({path.stat().st_size / 2**20:.0f} MB jsonl): run() "
                     f"{result['seconds']:.2f} s, peak RSS {result['peak_rss_mb']} MB, rows {result['rows']:,}")
    small, large = sizes
    lines.append(f"  peak RSS {large:,} / {small:,} rows: {peaks[large] / peaks[small]:.2f}x")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="inline,cached,files")
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()
    if args.child:
        return _child(json.loads(args.child))
    scale = 10 if args.quick else 1
    only = args.only.split(",")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    scratch = Path(tempfile.mkdtemp(prefix="stillhouse-steps-bench-"))
    try:
        if "inline" in only:
            print(f"inline: {100_000 // scale:,} rows LoadDataFromDicts >> 2 steps @ 1000, mp")
            print("\n".join(bench_inline(100_000 // scale, scratch, args.timeout)), flush=True)
        if "cached" in only:
            print(f"cached: {1_000_000 // scale:,} rows inline, fully cached rerun")
            print("\n".join(bench_cached(1_000_000 // scale, scratch, args.timeout)), flush=True)
        if "files" in only:
            print("files: LoadDataFromFileSystem jsonl >> 2 steps @ 1000, mp")
            print("\n".join(bench_files([100_000 // scale, 1_000_000 // scale], scratch, args.timeout)))
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
