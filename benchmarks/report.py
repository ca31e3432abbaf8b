"""Medians, ranges, ratios, derived figures and the targets, as JSON and markdown.

Ratios are ours / theirs (below 1 is faster). Every figure is computed from the
medians of one invocation, so the columns were measured side by side. With
`--compare REF` a stillhouse column `stillhouse-mp@COMMIT` runs REF's code: its
ratio `stillhouse-mp/stillhouse-mp@COMMIT` is the workspace against REF (below 1:
the workspace is faster), and every target is also evaluated on REF's columns.
"""

from __future__ import annotations

import statistics
from typing import Any

COLUMNS = ("stillhouse-mp", "stillhouse-threaded", "distilabel", "plain")
OURS = ("stillhouse-mp", "stillhouse-threaded")
GB = 1024**3
MB = 1024**2


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """`runs` holds one dict per measurement: case, column, result or error."""
    cases: dict[str, dict[str, Any]] = {}
    for run in runs:
        case = cases.setdefault(run["case"]["id"], {"case": run["case"], "columns": {}})
        column = case["columns"].setdefault(run["column"], {"results": [], "errors": []})
        if "error" in run:
            column["errors"].append(run["error"])
        else:
            column["results"].append(run["result"])
    for case in cases.values():
        for column in case["columns"].values():
            column["stats"] = _stats(column["results"])
        case["ratios"] = _ratios(case["columns"])
    return cases


def _stats(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not results:
        return None
    seconds = [r["seconds"] for r in results]
    stats: dict[str, Any] = {"n": len(results), "median": statistics.median(seconds),
                             "min": min(seconds), "max": max(seconds), "all": seconds}
    for key in ("peak_rss_bytes", "peak_pss_bytes", "cache_bytes", "killed_after_batches",
                "leaf_batches_after_kill", "rows", "driver_cpu_seconds", "read_seconds",
                "wall_seconds", "import_seconds", "processes"):
        values = [r[key] for r in results if key in r]
        if values:
            stats[key] = statistics.median(values)
    return stats


def median(case: dict[str, Any] | None, column: str, key: str = "median") -> float | None:
    if case is None:
        return None
    stats = case["columns"].get(column, {}).get("stats")
    return None if stats is None else stats.get(key)


def base(column: str) -> str:
    """`stillhouse-mp@52e2a12` -> `stillhouse-mp`."""
    return column.partition("@")[0]


def revisions(columns: list[str] | dict[str, Any]) -> list[str]:
    """The compared revisions' suffixes (`@52e2a12`) among `columns`, in order."""
    found: list[str] = []
    for column in columns:
        suffix = column[len(base(column)):]
        if suffix and suffix not in found:
            found.append(suffix)
    return found


def _ratios(columns: dict[str, Any]) -> dict[str, float]:
    revs = revisions(columns)
    pairs = [(ours + rev, theirs) for ours in OURS for rev in ["", *revs] for theirs in ("distilabel", "plain")]
    pairs += [(ours, ours + rev) for ours in OURS for rev in revs]
    ratios = {}
    for mine, theirs in pairs:
        a = (columns.get(mine) or {}).get("stats")
        b = (columns.get(theirs) or {}).get("stats")
        if a and b and b["median"] > 0:
            ratios[f"{mine}/{theirs}"] = a["median"] / b["median"]
    return ratios


def as_revision(cases: dict[str, Any], suffix: str) -> dict[str, Any]:
    """`cases` with the columns of revision `suffix` under the workspace's names (and
    the workspace's own stillhouse columns left out), to derive REF's targets."""
    renamed = {}
    for case_id, case in cases.items():
        columns = {base(k): v for k, v in case["columns"].items()
                   if k.endswith(suffix) or base(k) not in OURS}
        renamed[case_id] = {**case, "columns": columns, "ratios": _ratios(columns)}
    return renamed


# -- derived figures and targets ---------------------------------------------------------


def _by_role(cases: dict[str, Any], workload: str) -> dict[str, dict[str, Any]]:
    return {c["case"]["role"]: c for c in cases.values() if c["case"]["workload"] == workload}


def _batches(case: dict[str, Any]) -> int:
    params = case["case"]["params"]
    return -(-params["rows"] // params["batch"])


def derive(cases: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    derived: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []

    def target(name: str, value: float | None, limit: float, *, below: bool = True, unit: str = "") -> None:
        met = None if value is None else (value <= limit if below else value >= limit)
        targets.append({"target": name, "value": value, "limit": limit,
                        "op": "<=" if below else ">=", "unit": unit, "met": met})

    startup = _by_role(cases, "startup").get("startup")
    for column in OURS:
        if startup is not None:
            target(f"startup in run() ({column})", median(startup, column), 0.2, unit="s")

    overhead = _by_role(cases, "overhead")
    if {"probe", "small", "large"} <= set(overhead):
        for column in (*OURS, "distilabel", "plain"):
            derived.setdefault("overhead", {})[column] = _per_batch(overhead, column)
        for role, limit in (("small", 0.1), ("large", 0.07)):
            ratio = overhead[role]["ratios"].get("stillhouse-mp/distilabel")
            target(f"overhead {overhead[role]['case']['label']} (mp / distilabel)", ratio, limit, unit="x")

    memory = _by_role(cases, "memory")
    if "large" in memory:
        large = memory["large"]
        for column, limit in (("stillhouse-threaded", 3.0), ("stillhouse-mp", 5.0)):
            ratio = large["ratios"].get(f"{column}/plain")
            target(f"{column.removeprefix('stillhouse-')} {large['case']['label']} vs plain loop", ratio, limit, unit="x")
        plain_disk = median(large, "plain", "cache_bytes")
        for column in OURS:
            disk = median(large, column, "cache_bytes")
            target(f"cache on disk {large['case']['label']} vs the plain loop's Parquet ({column})",
                   disk / plain_disk if disk and plain_disk else None, 2.0, unit="x")
        for column in OURS:
            peak = median(memory["large"], column, "peak_rss_bytes")
            target(f"peak RSS {memory['large']['case']['label']} ({column})",
                   None if peak is None else peak / GB, 1.5, unit="GiB")
            if "small" in memory:
                small = median(memory["small"], column, "peak_rss_bytes")
                growth = peak / small if peak and small else None
                derived.setdefault("memory_growth", {})[column] = growth
                target(f"peak RSS growth {memory['small']['case']['label'].split(' x')[0]} -> "
                       f"{memory['large']['case']['label'].split(' x')[0]} ({column})", growth, 1.25, unit="x")

    replicas = _by_role(cases, "replicas")
    if {"one", "two"} <= set(replicas):
        for column in (*OURS, "distilabel"):
            one, two = median(replicas["one"], column), median(replicas["two"], column)
            speedup = one / two if one and two else None
            derived.setdefault("replica_speedup", {})[column] = speedup
            if column == "stillhouse-mp":
                target("2 replicas vs 1 (mp speed-up, medians)", speedup, 1.8, below=False, unit="x")
                target("2 replicas vs 1 (mp speed-up, worst repeat)", _worst_speedup(replicas, column),
                       1.8, below=False, unit="x")

    scaling = _by_role(cases, "scaling")
    sizes = [c for role, c in sorted(scaling.items()) if role != "probe"]
    if "probe" in scaling and len(sizes) >= 3:
        # Slopes over wide spans: between 1k and 5k rows the difference (~80 batches, tens of
        # ms) drowns in run-to-run noise, between 1k and 20k it does not.
        low, high = (sizes[0], sizes[-2]), (sizes[-2], sizes[-1])
        for column in (*OURS, "distilabel", "plain"):
            fixed = median(scaling["probe"], column)
            beyond = {}
            for case in sizes:
                total = median(case, column)
                if fixed is not None and total is not None:
                    beyond[case["case"]["params"]["rows"]] = (total - fixed) / max(1, _batches(case) - 1)
            slopes = [_slope(a, b, column) for a, b in (low, high)]
            derived.setdefault("scaling", {})[column] = {"per_batch_beyond_probe_s": beyond,
                                                         "marginal_s": slopes}
            if column in OURS and None not in slopes and slopes[0] > 0:
                rows = [c["case"]["params"]["rows"] for c in (*low, *high)]
                target(f"per-batch time {rows[2]:,}->{rows[3]:,} vs {rows[0]:,}->{rows[1]:,} rows ({column})",
                       slopes[1] / slopes[0], 1.3, unit="x")

    resume = _by_role(cases, "resume").get("resume")
    if resume is not None:
        for column in (*OURS, "distilabel"):
            stats = (resume["columns"].get(column) or {}).get("stats") or {}
            if "killed_after_batches" in stats:
                derived.setdefault("resume", {})[column] = {
                    "batches": _batches(resume), "killed_after": stats["killed_after_batches"],
                    "leaf_batches_after_kill": stats.get("leaf_batches_after_kill")}

    cached = _by_role(cases, "cached").get("cached")
    if cached is not None:
        for column in OURS:
            ratio = cached["ratios"].get(f"{column}/distilabel")
            if ratio is not None:
                target(f"cached re-run {cached['case']['label']} ({column} / distilabel)", ratio, 1.0, unit="x")
            else:
                target(f"cached re-run {cached['case']['label']} ({column})", median(cached, column), 1.5, unit="s")
    return derived, targets


def _worst_speedup(replicas: dict[str, dict[str, Any]], column: str) -> float | None:
    """The smallest speed-up of repeat i of 2 replicas over repeat i of 1: "stable"."""
    one, two = ((replicas[r]["columns"].get(column) or {}).get("stats") for r in ("one", "two"))
    if not one or not two:
        return None
    return min(a / b for a, b in zip(one["all"], two["all"], strict=False))


def _slope(a: dict[str, Any], b: dict[str, Any], column: str) -> float | None:
    """Marginal seconds per batch between two sizes: fixed costs cancel out."""
    ta, tb = median(a, column), median(b, column)
    if ta is None or tb is None:
        return None
    return (tb - ta) / (_batches(b) - _batches(a))


def _per_batch(cases: dict[str, dict[str, Any]], column: str) -> dict[str, float] | None:
    """Solve t - fixed = rows * per_row + batches * per_batch from the two sizes."""
    fixed, small, large = (median(cases[r], column) for r in ("probe", "small", "large"))
    if None in (fixed, small, large):
        return None
    n1, n2 = (cases[r]["case"]["params"]["rows"] for r in ("small", "large"))
    b1, b2 = _batches(cases["small"]), _batches(cases["large"])
    y1, y2 = small - fixed, large - fixed
    det = n1 * b2 - n2 * b1
    return {"fixed_s": fixed, "per_row_us": (y1 * b2 - y2 * b1) / det * 1e6,
            "per_batch_ms": (n1 * y2 - n2 * y1) / det * 1e3}


# -- markdown ------------------------------------------------------------------------------


def _cell(stats: dict[str, Any] | None, errors: list[str]) -> str:
    if stats is None:
        return "failed" if errors else "n/a"
    if stats["n"] == 1:
        return f"{stats['median']:.2f}"
    return f"{stats['median']:.2f} ({stats['min']:.2f}-{stats['max']:.2f})"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


NAMES = {"stillhouse-mp": "stillhouse mp", "stillhouse-threaded": "stillhouse threaded",
         "distilabel": "distilabel 1.5.3", "plain": "plain loop"}


def evaluate(cases: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`derive`, plus each target's value on every compared revision (`before`)."""
    derived, targets = derive(cases)
    for suffix in revisions([c for case in cases.values() for c in case["columns"]]):
        theirs = {t["target"]: t for t in derive(as_revision(cases, suffix))[1]}
        for t in targets:
            if t["target"] in theirs:
                t.setdefault("before", {})[suffix] = {k: theirs[t["target"]][k] for k in ("value", "met")}
    return derived, targets


def load_text(machine: dict[str, Any]) -> str:
    """The load averages of a run, as one phrase for the markdown."""
    text = f"load average before {machine['load_before'][0]:.2f}"
    during = machine.get("load_during")
    if during:
        text += f", during {during['median']:.2f} (median; max {during['max']:.2f})"
    return text + f", after {machine['load_after'][0]:.2f}"


def _name(column: str) -> str:
    suffix = column[len(base(column)):]
    return NAMES[base(column)] + (f" {suffix}" if suffix else "")


def markdown(report: dict[str, Any]) -> str:
    cases, columns = report["cases"], report["columns"]
    ratio_keys = list(dict.fromkeys(k for c in cases.values() for k in c["ratios"]))
    lines = ["Seconds in `run()`: median (min-max) over the repeats; ratios are ours / theirs.", "",
             "| workload | case | n | " + " | ".join(_name(c) for c in columns) + " | "
             + " | ".join(k.replace("stillhouse-", "") for k in ratio_keys) + " |",
             "|---|---|---|" + "---:|" * (len(columns) + len(ratio_keys))]
    for case in cases.values():
        info = case["case"]
        cells = [_cell(case["columns"].get(c, {}).get("stats"), case["columns"].get(c, {}).get("errors", []))
                 for c in columns]
        n = max((case["columns"][c]["stats"] or {}).get("n", 0) for c in case["columns"])
        lines.append(f"| {info['workload']} | {info['label']} | {n} | " + " | ".join(cells) + " | "
                     + " | ".join(_fmt(case["ratios"].get(k)) for k in ratio_keys) + " |")
    memory = [c for c in cases.values() if c["case"].get("pss")]
    if memory:
        lines += ["", "Memory: peak summed over the run's processes, RSS / PSS in MiB; cache on disk in MiB.", "",
                  "| case | " + " | ".join(_name(c) for c in columns) + " |", "|---|" + "---:|" * len(columns)]
        for case in memory:
            cells = []
            for column in columns:
                stats = case["columns"].get(column, {}).get("stats") or {}
                rss, pss, disk = (stats.get(k) for k in ("peak_rss_bytes", "peak_pss_bytes", "cache_bytes"))
                cells.append("n/a" if rss is None else f"{rss / MB:.0f} / {(pss or 0) / MB:.0f}; disk {(disk or 0) / MB:.0f}")
            lines.append(f"| {case['case']['label']} | " + " | ".join(cells) + " |")
    lines += _cpu_lines(cases, [c for c in columns if base(c) in OURS])
    lines += _read_lines(cases, columns)
    lines += ["", *_derived_lines(report["derived"]), "", *_target_lines(report["targets"])]
    return "\n".join(lines) + "\n"


def _cpu_lines(cases: dict[str, Any], columns: list[str]) -> list[str]:
    """CPU seconds of the driver's main thread in `run()` (median): less sensitive than
    wall time to other processes on the machine, so a change shows through the load."""
    return _median_table(
        cases, columns, "driver_cpu_seconds",
        "Driver CPU: seconds of the driver's main thread in `run()` (median; it waits for workers "
        "without using CPU, so this is the engine's own work on the driver).",
    )


def _read_lines(cases: dict[str, Any], columns: list[str]) -> list[str]:
    """Seconds of the first use of the returned Distiset (counting its rows), median:
    what reading the results costs after `run()` (distilabel reads them inside it)."""
    return _median_table(
        cases, columns, "read_seconds",
        "First read: seconds of the first use of the returned Distiset after `run()` (counting its "
        "rows; median). A stillhouse Distiset reads its results then; distilabel's already did in `run()`.",
    )


def _median_table(cases: dict[str, Any], columns: list[str], key: str, caption: str) -> list[str]:
    """A table of the median `key` per case (rows) and column, under `caption`; only the
    cases where some column measured it, nothing when none did."""
    cases = {k: c for k, c in cases.items() if any(median(c, col, key) is not None for col in columns)}
    if not columns or not cases:
        return []
    lines = ["", caption, "", "| workload | case | " + " | ".join(_name(c) for c in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for case in cases.values():
        cells = [_fmt(median(case, c, key)) for c in columns]
        lines.append(f"| {case['case']['workload']} | {case['case']['label']} | " + " | ".join(cells) + " |")
    return lines


def _target_lines(targets: list[dict[str, Any]]) -> list[str]:
    """The targets table; with `--compare`, each revision's value and verdict first."""
    revs = list(dict.fromkeys(rev for t in targets for rev in t.get("before", {})))
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    lines = ["| target | " + "".join(f"{rev.lstrip('@')} | met |" for rev in revs) + " measured | limit | met |",
             "|---|" + "---:|---|" * len(revs) + "---:|---:|---|"]
    for t in targets:
        before = ""
        for rev in revs:
            old = t.get("before", {}).get(rev, {"value": None, "met": None})
            before += f" {_fmt(old['value'])} {t['unit']} | {verdict[old['met']]} |"
        lines.append(f"| {t['target']} |{before} {_fmt(t['value'])} {t['unit']} | {t['op']} {t['limit']} {t['unit']} "
                     f"| {verdict[t['met']]} |")
    return lines


def _derived_lines(derived: dict[str, Any]) -> list[str]:
    lines = []
    for column, figures in (derived.get("overhead") or {}).items():
        if figures:
            lines.append(f"- overhead, {column}: fixed {figures['fixed_s']:.2f} s, "
                         f"{figures['per_batch_ms']:.2f} ms per batch, {figures['per_row_us']:.2f} µs per row")
    for column, figures in (derived.get("scaling") or {}).items():
        beyond = ", ".join(f"{rows:,}: {sec * 1000:.2f}" for rows, sec in figures["per_batch_beyond_probe_s"].items())
        low, high = (_fmt(None if v is None else v * 1000) for v in figures["marginal_s"])
        lines.append(f"- scaling, {column}: marginal ms per batch {low} (smallest to second largest), {high} (two largest); "
                     f"ms per batch beyond the 1-batch probe: {beyond}")
    for column, figures in (derived.get("resume") or {}).items():
        lines.append(f"- resume, {column}: killed after {figures['killed_after']:.0f} of {figures['batches']} "
                     f"leaf batches; the resumed run ran {figures['leaf_batches_after_kill']:.0f} more")
    for column, speedup in (derived.get("replica_speedup") or {}).items():
        lines.append(f"- replicas, {column}: 2 replicas are {_fmt(speedup)}x as fast as 1")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Re-render a results JSON with the current derivations: `python -m benchmarks.report FILE`."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    result = json.loads(args.results.read_text(encoding="utf-8"))
    for run in result["runs"]:  # results written before the key was renamed
        if "batches_redone" in run.get("result", {}):
            run["result"]["leaf_batches_after_kill"] = run["result"].pop("batches_redone")
    result["cases"] = summarise(result["runs"])
    result["derived"], result["targets"] = evaluate(result["cases"])
    print(markdown(result))


if __name__ == "__main__":
    main()
