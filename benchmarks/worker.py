"""One measurement in a fresh process: `python -m benchmarks.worker SPEC_JSON`.

Run by the harness with the interpreter of the engine under test (the workspace's
for stillhouse and the plain loop, the throwaway venv's for distilabel). It builds
the pipeline, times `run()` from the call to the returned Distiset, and prints one
line `BENCH_RESULT {json}` on stdout. Set `BENCH_PROFILE=path` to write a cProfile
of `run()` there. With `BENCH_HIDE_SOURCES=folder` (another revision's columns, see
`revision.py`), `sys.path` entries under that folder are dropped before anything of
stillhouse is imported.

Modes: "fresh" (use_cache=False), "prime" (fill the cache; the harness ignores the
time), "cached" (use_cache=True over a primed cache), "resume-first" (use_cache=True;
the harness kills it half way), "resume" (use_cache=True after that kill).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

MARKER = "BENCH_RESULT "


def _rows(distiset: Any) -> int:
    return sum(len(splits["train"]) for splits in distiset.values())


def run_engine(spec: dict[str, Any]) -> dict[str, Any]:
    os.environ["BENCH_ENGINE"] = spec["engine"]
    started = time.perf_counter()
    if spec["pipeline"].startswith("latency-"):
        from benchmarks import latency as pipelines
    else:
        from benchmarks import pipelines

    imported = time.perf_counter()
    pipeline = pipelines.BUILDERS[spec["pipeline"]](spec["cache_dir"], spec.get("executor", "mp"), spec["params"])
    built = time.perf_counter()
    kwargs: dict[str, Any] = {"use_cache": spec["mode"] != "fresh"}
    if spec["engine"] == "stillhouse":
        kwargs["progress"] = False
    profile_path = os.environ.get("BENCH_PROFILE")
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        if spec["engine"] == "stillhouse":
            _profile_workers(profile_path)
    run_started = time.perf_counter()
    cpu_started = time.thread_time()  # the driver's main thread: the engine loop
    if profiler is not None:
        profiler.enable()
    distiset = pipeline.run(**kwargs)
    if profiler is not None:
        profiler.disable()
    finished = time.perf_counter()
    driver_cpu = time.thread_time() - cpu_started
    if profiler is not None:
        profiler.dump_stats(profile_path)
    rows = _rows(distiset)  # the first use of the results: a Distiset may read them only now
    result: dict[str, Any] = {
        "seconds": finished - run_started,
        "import_seconds": imported - started,
        "build_seconds": built - imported,
        "rows": rows,
        "read_seconds": time.perf_counter() - finished,
        "driver_cpu_seconds": driver_cpu,
    }
    engine = sys.modules.get(f"{spec['engine']}.core") or sys.modules.get(spec["engine"])
    if engine is not None:  # which sources ran: the workspace's or a compared revision's
        result["source"] = str(Path(engine.__file__ or ".").parent)
    summary = getattr(pipeline, "last_run_summary", None)
    if summary:
        result["cached_batches"] = sum(int(row.get("cached_batches", 0) or 0) for row in summary)
    return result


def _profile_workers(driver_path: str) -> None:
    """Also profile every replica ("mp" processes, "threaded" threads) into
    `<driver_path minus .prof>-<step>-<replica>.prof`: cProfile sees one thread only."""
    import cProfile
    import functools

    from stillhouse.executors import mp, threaded

    def profiled(name: str, function: Any) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any) -> Any:
            profiler = cProfile.Profile()
            profiler.enable()
            try:
                return function(*args)
            finally:
                profiler.disable()
                profiler.dump_stats(driver_path.removesuffix(".prof") + f"-{name(*args)}.prof")
        return wrapper

    mp.worker_main = profiled(lambda step, replica, *_: f"{step.name}-{replica}", mp.worker_main)
    threaded.ThreadedExecutor._run_replica = profiled(
        lambda self, runner, *_: f"{runner.step.name}-{runner.replica}", threaded.ThreadedExecutor._run_replica)


def run_plain(spec: dict[str, Any]) -> dict[str, Any]:
    from benchmarks import plain

    out = Path(spec["cache_dir"])
    out.mkdir(parents=True, exist_ok=True)
    function = plain.FUNCTIONS[(spec["pipeline"], spec["mode"])]
    started = time.perf_counter()
    rows = function(spec["params"], out)
    return {"seconds": time.perf_counter() - started, "rows": rows}


def _hide_sources() -> None:
    hidden = os.environ.get("BENCH_HIDE_SOURCES")
    if hidden:
        sys.path[:] = [p for p in sys.path if not os.path.abspath(p or ".").startswith(hidden + os.sep)]


def main() -> None:
    _hide_sources()
    spec = json.loads(sys.argv[1])
    result = run_plain(spec) if spec["engine"] == "plain" else run_engine(spec)
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
