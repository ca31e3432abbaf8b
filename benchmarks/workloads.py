"""The workloads: what runs, at which sizes, how often, and what it should prove.

A workload is a list of cases; a case is one pipeline with one set of parameters,
run on every column. `role` names what a case is for, so the derived figures and
targets (`report.py`) work the same at full and `--quick` sizes. `repeat` is the
full-mode default: the big cases run fewer times to keep a full run near 20 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KB_TEXT = 1000


@dataclass(frozen=True)
class Workload:
    name: str
    measures: str
    full: list[dict[str, Any]]
    quick: list[dict[str, Any]]


def _case(role: str, label: str, pipeline: str, params: dict[str, Any], *, repeat: int = 3,
          kind: str = "fresh", **extra: Any) -> dict[str, Any]:
    return {"role": role, "label": label, "pipeline": pipeline, "params": params,
            "repeat": repeat, "kind": kind, **extra}


def _chain(role: str, rows: int, batch: int, repeat: int = 3, **extra: Any) -> dict[str, Any]:
    return _case(role, f"{rows:,} rows @ {batch}", "chain", {"rows": rows, "batch": batch},
                 repeat=repeat, **extra)


def _memory(role: str, rows: int, repeat: int) -> dict[str, Any]:
    params = {"rows": rows, "batch": 1000, "text_bytes": KB_TEXT}
    return _case(role, f"{rows:,} rows x 1 KB @ 1000", "chain", params, repeat=repeat,
                 pss=True, disk=True)


def _replicas(role: str, rows: int, n: int, repeat: int = 3) -> dict[str, Any]:
    params = {"rows": rows, "batch": 10, "replicas": n}  # "iterations" is calibrated at run time
    skip = () if n == 1 else ("plain",)
    return _case(role, f"{rows:,} rows x 5 ms, {n} replica{'s' if n > 1 else ''}", "replicas",
                 params, repeat=repeat, skip=skip)


def _resume(rows: int, batch: int, sleep: float, repeat: int = 3, timeout: float = 60) -> dict[str, Any]:
    params = {"rows": rows, "batch": batch, "sleep": sleep}
    label = f"{rows:,} rows @ {batch}, {sleep * 1000:.0f} ms/batch, killed at 50%"
    # A short timeout: a run that has not finished a few seconds' work in a minute hangs.
    return _case("resume", label, "resume", params, repeat=repeat, kind="resume", timeout=timeout)


WORKLOADS: list[Workload] = [
    Workload(
        "startup",
        "Seconds from `run()` to the Distiset for 10 rows and one step: plugin loading, "
        "validation, cache set-up, worker start and stop, writing and reading results.",
        full=[_case("startup", "10 rows, 1 step", "startup", {"rows": 10, "batch": 50}, repeat=5)],
        quick=[_case("startup", "10 rows, 1 step", "startup", {"rows": 10, "batch": 50})],
    ),
    Workload(
        "overhead",
        "Generator >> two trivial steps at small and large batches; with the 1-batch probe "
        "as fixed cost, the two sizes give the engine's cost per row and per batch.",
        full=[_chain("probe", 50, 50), _chain("small", 10_000, 50), _chain("large", 100_000, 1000)],
        quick=[_chain("probe", 50, 50), _chain("small", 1_000, 50), _chain("large", 5_000, 500)],
    ),
    Workload(
        "scaling",
        "The same chain at batch 50 and growing rows: the marginal time per batch between "
        "the two largest sizes must stay within 1.3x of that between the two smallest.",
        full=[_chain("probe", 50, 50, repeat=5), _chain("s1", 1_000, 50, repeat=5), _chain("s2", 5_000, 50, repeat=5),
              _chain("s3", 20_000, 50, repeat=2), _chain("s4", 50_000, 50, repeat=2)],
        quick=[_chain("probe", 50, 50), _chain("s1", 200, 50), _chain("s2", 500, 50),
               _chain("s3", 1_000, 50), _chain("s4", 2_000, 50)],
    ),
    Workload(
        "topology",
        "Fan-out to 3 steps, fan-in (zip), sample_n_steps(2) over 3 branches, convergence "
        "(zip), a global step at the end.",
        full=[_case("topology", "5,000 rows @ 100", "topology", {"rows": 5_000, "batch": 100})],
        quick=[_case("topology", "500 rows @ 50", "topology", {"rows": 500, "batch": 50})],
    ),
    Workload(
        "replicas",
        "A CPU-bound step (~5 ms of pure Python per row, batch 10) with 1 and 2 replicas on "
        "2 cores: speed-up of 2 replicas over 1.",
        full=[_replicas("one", 800, 1), _replicas("two", 800, 2)],
        quick=[_replicas("one", 200, 1), _replicas("two", 200, 2)],
    ),
    Workload(
        "memory",
        "Rows of ~1 KB text through generator >> two trivial steps at batch 1000: peak "
        "resident memory summed over every process of the run (RSS; PSS counts shared "
        "pages once), and the size of the cache on disk.",
        full=[_memory("small", 250_000, repeat=1), _memory("large", 1_000_000, repeat=2)],
        quick=[_memory("small", 5_000, repeat=1), _memory("large", 20_000, repeat=1)],
    ),
    Workload(
        "cached",
        "Re-run of a finished run with use_cache=True (the first run is not timed): "
        "everything comes from the cache. The plain loop reads its Parquet back.",
        full=[_chain("cached", 100_000, 1000, kind="cached")],
        quick=[_chain("cached", 5_000, 500, kind="cached")],
    ),
    Workload(
        "resume",
        "A run is SIGKILLed (its whole process group) once half its batches are done; "
        "the time of the run that finishes it. The plain loop does the second half only.",
        full=[_resume(20_000, 100, 0.01)],
        quick=[_resume(2_000, 100, 0.02, repeat=1, timeout=30)],
    ),
]

BY_NAME = {w.name: w for w in WORKLOADS}


def cases(names: list[str], *, quick: bool, iterations: int) -> list[dict[str, Any]]:
    """The cases of the chosen workloads, each with an `id` and the calibrated burn."""
    chosen = []
    for name in names:
        workload = BY_NAME[name]
        for case in workload.quick if quick else workload.full:
            case = {**case, "workload": name, "id": f"{name}-{case['role']}"}
            if case["pipeline"] == "replicas":
                case["params"] = {**case["params"], "iterations": iterations}
            if quick:
                case["repeat"] = 1
            chosen.append(case)
    return chosen
