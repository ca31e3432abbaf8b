"""The latency workload (issue 15): slow remote calls, and how busy the engine keeps them.

5,000 rows; each waits `asyncio.sleep(latency)` with a latency drawn from a seeded
lognormal (median 100 ms, sigma 1.0), as a call to an LLM endpoint would; at most 64
rows are in flight at once. The ideal time is the sum of the latencies / 64.

Columns (each a fresh worker process, run through `benchmarks.worker`):

- stillhouse async, "mp" and "threaded": an async step; `SLOTS` rows in flight as
  `concurrency` batches of `batch` rows in one replica.
- stillhouse batch-synchronous baseline: a sync step whose batch waits for its slowest
  row, the same 64 slots split as replicas x batch (8 x 8), as the engine ran before
  async steps.
- distilabel 1.5.3: `TextGeneration` with an `AsyncLLM` stand-in that sleeps the
  row's latency, batch 50 (its own venv, see `venv.py`).

Run: `uv run --no-sync python -m benchmarks.latency [--columns ...] [--rows N]`.
The builders here are picked by `benchmarks.worker` for pipelines named `latency-*`;
classes are defined for the engine in `BENCH_ENGINE` only (distilabel has no async steps).
"""

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROWS = 5_000
SLOTS = 64
MEDIAN = 0.1
SIGMA = 1.0
SEED = 15
ENGINE = os.environ.get("BENCH_ENGINE", "stillhouse")


def latencies(rows: int = ROWS, seed: int = SEED) -> list[float]:
    """Seconds each row waits: lognormal with median `MEDIAN` and sigma `SIGMA`."""
    rng = random.Random(seed)
    return [MEDIAN * math.exp(rng.gauss(0.0, SIGMA)) for _ in range(rows)]


_LATENCIES = latencies(int(os.environ.get("BENCH_LATENCY_ROWS", ROWS)))


if ENGINE == "stillhouse":
    from stillhouse.core import GeneratorStep, Pipeline, Step, StepInput

    class Ids(GeneratorStep):
        rows: int = ROWS

        @property
        def outputs(self) -> list[str]:
            return ["i"]

        def process(self, offset: int = 0) -> Any:
            size = self.batch_size or 50
            if offset >= self.rows:
                yield [], True
            for start in range(offset, self.rows, size):
                stop = min(self.rows, start + size)
                yield [{"i": i} for i in range(start, stop)], stop >= self.rows

    class AwaitLatency(Step):
        """The async step: its batch's rows wait side by side on the replica's loop."""

        scale: float = 1.0  # 0: no waiting, to measure what the engine itself costs

        @property
        def inputs(self) -> list[str]:
            return ["i"]

        @property
        def outputs(self) -> list[str]:
            return ["waited"]

        async def process(self, inputs: StepInput) -> Any:
            await asyncio.gather(*(asyncio.sleep(self.scale * _LATENCIES[row["i"]]) for row in inputs))
            yield [{**row, "waited": _LATENCIES[row["i"]]} for row in inputs]

    class SleepBatch(Step):
        """The batch-synchronous baseline: a batch returns when its slowest row has."""

        @property
        def inputs(self) -> list[str]:
            return ["i"]

        @property
        def outputs(self) -> list[str]:
            return ["waited"]

        def process(self, inputs: StepInput) -> Any:
            time.sleep(max(_LATENCIES[row["i"]] for row in inputs))
            yield [{**row, "waited": _LATENCIES[row["i"]]} for row in inputs]

    def latency_async(cache_dir: str, executor: str, p: dict[str, Any]) -> Any:
        with Pipeline(name="latency-async", cache_dir=cache_dir, executor=executor) as pipeline:
            concurrency = p["slots"] // p["batch"]
            step = AwaitLatency(input_batch_size=p["batch"], concurrency=concurrency, scale=p.get("scale", 1.0))
            Ids(rows=p["rows"], batch_size=50) >> step
        return pipeline

    def latency_batched(cache_dir: str, executor: str, p: dict[str, Any]) -> Any:
        with Pipeline(name="latency-batched", cache_dir=cache_dir, executor=executor) as pipeline:
            replicas = p["slots"] // p["batch"]
            Ids(rows=p["rows"], batch_size=50) >> SleepBatch(input_batch_size=p["batch"], resources={"replicas": replicas})
        return pipeline

    BUILDERS = {"latency-async": latency_async, "latency-batched": latency_batched}

elif ENGINE == "distilabel":
    from distilabel.models.llms.base import AsyncLLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    class SleepingLLM(AsyncLLM):
        """An `AsyncLLM` stand-in: each call sleeps the latency of the row it is for."""

        def load(self) -> None:
            super().load()

        @property
        def model_name(self) -> str:
            return "sleeping-llm"

        async def agenerate(self, input: Any, num_generations: int = 1) -> Any:
            row = int(input[-1]["content"].split()[-1])
            await asyncio.sleep(_LATENCIES[row])
            return {"generations": ["ok"] * num_generations,
                    "statistics": {"input_tokens": [1], "output_tokens": [1]}}

    def latency_distilabel(cache_dir: str, executor: str, p: dict[str, Any]) -> Any:
        with Pipeline(name="latency-distilabel", cache_dir=cache_dir) as pipeline:
            data = [{"instruction": f"row {i}"} for i in range(p["rows"])]
            LoadDataFromDicts(data=data, batch_size=50) >> TextGeneration(
                llm=SleepingLLM(), input_batch_size=p["batch"], add_raw_output=False, add_raw_input=False
            )
        return pipeline

    BUILDERS = {"latency-distilabel": latency_distilabel}


# -- the command ----------------------------------------------------------------------------

COLUMNS = {
    # key: (engine, executor, pipeline, params)
    "async-mp": ("stillhouse", "mp", "latency-async", {"batch": 1}),
    "async-threaded": ("stillhouse", "threaded", "latency-async", {"batch": 1}),
    "async-mp-batch4": ("stillhouse", "mp", "latency-async", {"batch": 4}),
    # the same runs without waiting: what the engine itself costs (start-up included)
    "async-mp-no-wait": ("stillhouse", "mp", "latency-async", {"batch": 1, "scale": 0.0}),
    "async-threaded-no-wait": ("stillhouse", "threaded", "latency-async", {"batch": 1, "scale": 0.0}),
    # ... and on a tenth of the rows: the difference is the engine's cost per row
    "async-mp-no-wait-tenth": ("stillhouse", "mp", "latency-async", {"batch": 1, "scale": 0.0, "part": 10}),
    "baseline-mp-8x8": ("stillhouse", "mp", "latency-batched", {"batch": 8}),
    "distilabel": ("distilabel", "mp", "latency-distilabel", {"batch": 50}),
}


def main(argv: list[str] | None = None) -> int:
    from benchmarks import harness, venv

    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--columns", default=",".join(COLUMNS), help=f"subset of {', '.join(COLUMNS)}")
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.columns.split(",") if k.strip()]
    ideal = sum(latencies(args.rows)) / SLOTS
    print(f"{args.rows} rows, lognormal median {MEDIAN * 1000:.0f} ms sigma {SIGMA}, {SLOTS} slots: "
          f"sum of latencies {sum(latencies(args.rows)):.1f} s, ideal {ideal:.2f} s")
    load = os.getloadavg()
    results: dict[str, Any] = {"rows": args.rows, "slots": SLOTS, "ideal_seconds": ideal,
                               "loadavg_before": load, "cpus": os.cpu_count(), "columns": {}}
    scratch = Path(args.results_dir) / "latency-scratch"
    env = harness.worker_env({"BENCH_LATENCY_ROWS": str(args.rows)})
    for key in keys:
        engine, executor, pipeline, params = COLUMNS[key]
        python = sys.executable
        if engine == "distilabel":
            python, note = venv.ensure()
            print(note)
            if python is None:
                continue
        column = harness.Column(key, engine, python, executor)
        work = scratch / key
        work.mkdir(parents=True, exist_ok=True)
        rows = args.rows // params.get("part", 1)
        spec = {"pipeline": pipeline, "params": {**params, "rows": rows, "slots": SLOTS},
                "cache_dir": str(work / "cache"), "mode": "fresh"}
        env["DISTILABEL_CACHE_DIR"] = str(work / "cache")
        try:
            result = harness.run_worker(column, spec, work / "worker.log", timeout=args.timeout, env=env)
        except harness.MeasurementError as exc:
            print(f"{key}: FAILED {exc}")
            results["columns"][key] = {"error": str(exc)}
            continue
        result["ratio_to_ideal"] = result["seconds"] / ideal
        if "driver_cpu_seconds" in result:
            result["driver_cpu_ms_per_row"] = 1000 * result["driver_cpu_seconds"] / rows
        results["columns"][key] = result
        print(f"{key:18} {result['seconds']:8.2f} s  {result['ratio_to_ideal']:5.2f}x ideal  "
              f"rows {result['rows']}  driver CPU/row "
              f"{result.get('driver_cpu_ms_per_row', float('nan')):.3f} ms  load {os.getloadavg()[0]:.1f}")
    _derive(results, args.rows)
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency-latest.json").write_text(json.dumps(results, indent=2))
    return 0


def _derive(results: dict[str, Any], rows: int) -> None:
    """The engine's own cost per row: the no-wait run minus the one on a tenth of the rows
    (start-up, the same in both, cancels out)."""
    columns = results["columns"]
    full, tenth = columns.get("async-mp-no-wait", {}), columns.get("async-mp-no-wait-tenth", {})
    if "seconds" in full and "seconds" in tenth:
        extra = rows - rows // 10
        results["marginal_ms_per_row_mp"] = 1000 * (full["seconds"] - tenth["seconds"]) / extra
        results["marginal_driver_cpu_ms_per_row_mp"] = (
            1000 * (full["driver_cpu_seconds"] - tenth["driver_cpu_seconds"]) / extra
        )
        print(f"engine cost per row on mp (no waiting, start-up removed): "
              f"{results['marginal_ms_per_row_mp']:.3f} ms wall, "
              f"{results['marginal_driver_cpu_ms_per_row_mp']:.3f} ms driver CPU")
    for key in ("async-mp", "async-threaded"):
        probe = columns.get(f"{key}-no-wait", {})
        if "seconds" in columns.get(key, {}) and "seconds" in probe:
            print(f"{key}: {columns[key]['seconds']:.2f} s with waiting, {probe['seconds']:.2f} s "
                  f"without; waiting added {columns[key]['seconds'] - probe['seconds']:.2f} s "
                  f"(ideal {results['ideal_seconds']:.2f} s)")


if __name__ == "__main__":
    raise SystemExit(main())
