"""Run the benchmarks: `uv run --no-sync python -m benchmarks.run [--quick] [--only W] [--repeat N]`.

Every case runs on every column (stillhouse "mp", stillhouse "threaded", distilabel
1.5.3, the plain loop), alternating the columns' order from one repeat to the next;
medians, min-max and ratios are printed and written to benchmarks/results/ as JSON
and markdown. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import harness, report, revision, venv, work
from benchmarks.workloads import BY_NAME, cases

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run of a couple of minutes")
    parser.add_argument("--only", action="append", default=[], metavar="WORKLOAD",
                        help=f"run only these workloads (repeatable or comma-separated): {', '.join(BY_NAME)}")
    parser.add_argument("--repeat", type=int, help="repeats of every case (default: per case, 1 with --quick)")
    parser.add_argument("--columns", default=",".join(report.COLUMNS),
                        help=f"comma-separated subset of {', '.join(report.COLUMNS)}")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--profile", type=Path, metavar="DIR", help="write a cProfile of each stillhouse run() here")
    parser.add_argument("--timeout", type=float, help="seconds per worker process (default 900, 120 with --quick)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the uncounted first run per column")
    parser.add_argument("--compare", metavar="REF",
                        help="also run every stillhouse column at git revision REF, side by side "
                             "(columns 'stillhouse-mp@COMMIT', ...; ratios workspace / REF)")
    args = parser.parse_args(argv)
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()] or list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown workload(s) {unknown!r}; available: {', '.join(BY_NAME)}")
    args.workloads = names
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    bad = [c for c in columns if c not in report.COLUMNS]
    if bad:
        parser.error(f"unknown column(s) {bad!r}; available: {', '.join(report.COLUMNS)}")
    args.column_keys = columns
    args.timeout = args.timeout or (120.0 if args.quick else 900.0)
    return args


def make_columns(keys: list[str], notes: list[str], compare: revision.Revision | None = None) -> list[harness.Column]:
    python = harness.default_python()
    columns = []
    for key in keys:
        if key == "distilabel":
            distilabel, note = venv.ensure(log=lambda text: print(text, flush=True))
            notes.append(note)
            print(note, flush=True)
            if distilabel is None:
                continue
            columns.append(harness.Column(key, "distilabel", distilabel))
        elif key == "plain":
            columns.append(harness.Column(key, "plain", python))
        else:
            executor = key.removeprefix("stillhouse-")
            columns.append(harness.Column(key, "stillhouse", python, executor))
            if compare is not None:  # right after: the rotation alternates the two revisions
                columns.append(harness.Column(f"{key}@{compare.commit}", "stillhouse", python, executor,
                                              paths=compare.paths, env=compare.env))
    return columns


def machine(columns: list[harness.Column]) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except OSError:
        memory = 0
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "git": _git(),
            "memory_gib": round(memory / 1024**3, 1), "python": platform.python_version(),
            "versions": {c.key: harness.engine_version(c) + (f" at {c.key.partition('@')[2]}" if c.paths else "")
                         for c in columns}}


def _export(ref: str, scratch: Path, notes: list[str]) -> revision.Revision:
    try:
        compare = revision.export(ref, scratch / "compare")
    except revision.RevisionError as exc:
        raise SystemExit(f"--compare: {exc}") from None
    note = f"compared with {ref} ({compare.commit}): its packages/ exported to {scratch / 'compare'}"
    notes.append(note)
    print(note, flush=True)
    return compare


def _git() -> str:
    """The commit measured, with "+dirty" when packages/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent.parent,
                              capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "packages"], cwd=RESULTS.parent.parent,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="stillhouse-bench-"))
    try:
        return _run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    notes: list[str] = []
    compare = _export(args.compare, scratch, notes) if args.compare else None
    columns = make_columns(args.column_keys, notes, compare)
    iterations = work.calibrate_burn() if "replicas" in args.workloads else 0
    chosen = cases(args.workloads, quick=args.quick, iterations=iterations)
    if args.repeat:
        chosen = [{**c, "repeat": args.repeat} for c in chosen]
    load_before = os.getloadavg()
    if load_before[0] > 1.0:
        print(f"warning: load average {load_before[0]:.1f} before the run: other processes compete "
              "for the cores and the figures will be slower and noisier", flush=True)
    info = machine(columns)  # before the run: the commit measured is the one at the start
    if compare is not None:
        info["compare"] = {"ref": compare.ref, "commit": compare.commit}
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    if not args.no_warmup:  # write bytecode caches and warm the page cache, uncounted
        warm = {**cases(["startup"], quick=True, iterations=0)[0], "id": "warmup"}
        for column in columns:
            try:
                harness.measure(column, warm, scratch, timeout=args.timeout)
            except harness.MeasurementError as exc:
                print(f"warm-up of {column.key} failed: {exc}", flush=True)
    for index, case in enumerate(chosen):
        applicable = [c for c in columns if c.key not in case.get("skip", ())]
        failed: set[str] = set()  # a column that failed a case is not tried again on it
        for rep in range(case["repeat"]):
            shift = (rep + index) % len(applicable) if applicable else 0
            for column in applicable[shift:] + applicable[:shift]:
                if column.key in failed:
                    continue
                runs.append(_one(column, case, rep, scratch, args))
                if "error" in runs[-1]:
                    failed.add(column.key)
    summary = report.summarise(runs)
    derived, targets = report.evaluate(summary)
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "machine": {**info, "load_before": load_before, "load_after": os.getloadavg(),
                    "load_during": _load_during(runs)},
        "notes": notes + ([f"burn: {iterations} iterations per row (~5 ms)"] if iterations else []),
        "columns": [c.key for c in columns],
        "duration_s": round(time.monotonic() - started, 1),
        "cases": summary,
        "derived": derived,
        "targets": targets,
        "runs": runs,
    }


def _one(column: harness.Column, case: dict[str, Any], rep: int, scratch: Path, args: argparse.Namespace) -> dict[str, Any]:
    entry: dict[str, Any] = {"case": case, "column": column.key, "repeat": rep}
    label = f"{case['workload']:<9} {case['label']:<42} {column.key:<20} #{rep + 1}"
    try:
        result = harness.measure(column, case, scratch, timeout=args.timeout, profile=args.profile)
    except harness.MeasurementError as exc:
        entry["error"] = str(exc)
        print(f"{label} FAILED: {str(exc).splitlines()[0]}", flush=True)
        return entry
    entry["result"] = result
    entry["load"] = os.getloadavg()[0]  # 1-minute load average right after the measurement
    extra = f"  peak {result['peak_rss_bytes'] / 1024**2:.0f} MiB" if case.get("pss") else ""
    print(f"{label} {result['seconds']:8.2f} s{extra}", flush=True)
    return entry


def _load_during(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Median and max of the 1-minute load average sampled after each measurement."""
    loads = sorted(r["load"] for r in runs if "load" in r)
    if not loads:
        return None
    return {"median": loads[len(loads) // 2], "max": loads[-1]}


def write(result: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if result["quick"] else "")
    json_path, md_path = directory / f"{stamp}.json", directory / f"{stamp}.md"
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    head = (f"# Benchmarks {result['date']}\n\n`{result['command']}` on {result['machine']['cpu']}, "
            f"{result['machine']['cores']} cores, {result['machine']['memory_gib']} GiB, commit "
            f"{result['machine']['git']}; versions {result['machine']['versions']}; "
            f"{result['duration_s']} s; {report.load_text(result['machine'])}.\n\n")
    if result["quick"]:
        head += "Quick sizes: too small for the targets, which are shown for the harness's sake only.\n\n"
    md_path.write_text(head + report.markdown(result), encoding="utf-8")
    for path in (json_path, md_path):
        shutil.copyfile(path, directory / f"latest{''.join(path.suffixes[-1:])}")
    return json_path, md_path


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # Ctrl+C or a kill stops the run through the `finally`s that end the worker's group.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    result = run(args)
    json_path, md_path = write(result, args.results_dir)
    print()
    print(report.markdown(result))
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"wrote {json_path} and {md_path} ({result['duration_s']} s)")
    failed = [r for r in result["runs"] if "error" in r and r["column"].startswith("stillhouse")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
