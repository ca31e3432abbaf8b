"""`stillhouse cache ...`: look into, measure, remove and explain the pipeline cache.

Everything here reads the layout documented in `run_store.py` and never writes to
it, except `remove`, which takes the pipeline's lock first so a running pipeline
never loses its cache. The decisions `explain` prints are `reuse.decide`'s, the
function the stores use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stillhouse.cache import lock
from stillhouse.cache.durable import LASTING
from stillhouse.cache.records import BATCH, iter_headers
from stillhouse.cache.reuse import decide
from stillhouse.cache.run_store import pipeline_dir, step_dir
from stillhouse.cache.signature import explain_changes, signature_table
from stillhouse.cache.store import LOG, META, log_holdings, read_meta
from stillhouse.core.cli import add_param_option, console, load_pipeline, parse_params, table
from stillhouse.core.errors import CacheError, CacheLockedError, CorruptCacheError
from stillhouse.core.pipeline import CACHE_DIR_ENV, DEFAULT_CACHE_DIR

STEPS = "steps"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _root(args: argparse.Namespace) -> Path:
    given = args.cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
    if "://" in given and not given.startswith("file://"):
        raise CacheError(
            f"The cache {given!r} is remote (an fsspec URL): `stillhouse cache` reads local cache "
            f"folders only. Use your storage's own tools on {given.rstrip('/')}/<pipeline>/ (one "
            "folder per run, `steps/`, `lasting/`), or pass a local --cache-dir."
        )
    return Path(given.removeprefix("file://")).expanduser()


def _pipelines(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _named(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_dir() or name.startswith(".") or "/" in name:
        known = ", ".join(repr(p.name) for p in _pipelines(root)) or "none"
        raise CacheError(
            f"No cached pipeline {name!r} in {root}. Cached pipelines: {known}. "
            "Check the name (`stillhouse cache list`) or pass --cache-dir."
        )
    return path


def _usage(path: Path) -> tuple[int, float]:
    """Bytes on disk and the newest modification time under `path`."""
    size, newest = 0, path.stat().st_mtime
    for entry in path.rglob("*"):
        try:
            stat = entry.lstat()
        except FileNotFoundError:  # removed by a run while we walk
            continue
        if entry.is_file():
            size += stat.st_size
        newest = max(newest, stat.st_mtime)
    return size, newest


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _when(mtime: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime))


def _run_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir() and p.name not in (STEPS, LASTING))


def _lasting_dirs(base: Path) -> list[Path]:
    lasting = base / LASTING
    return sorted(p for p in lasting.iterdir() if p.is_dir()) if lasting.is_dir() else []


def _step_dirs(base: Path) -> list[Path]:
    steps = base / STEPS
    return sorted(p for p in steps.iterdir() if p.is_dir()) if steps.is_dir() else []


# -- list / size / remove ------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    root, out = _root(args), console()
    found = _pipelines(root)
    if not found:
        out.print(f"No cached pipelines in {root}.", soft_wrap=True)
        return 0
    listing = table(f"Cached pipelines in {root}", "pipeline", "runs", "step stores", "size",
                    "last modified")
    for base in found:
        size, newest = _usage(base)
        listing.add_row(base.name, str(len(_run_dirs(base))), str(len(_step_dirs(base))),
                        _human(size), _when(newest))
    out.print(listing)
    return 0


def _cmd_size(args: argparse.Namespace) -> int:
    root, out = _root(args), console()
    if args.name is None:
        out.print(f"Cache size of {root}", soft_wrap=True)  # a long path must not fold
        sizes = table("", "pipeline", "size")
        total = 0
        for base in _pipelines(root):
            size = _usage(base)[0]
            total += size
            sizes.add_row(base.name, _human(size))
        out.print(sizes)
        out.print(f"Total: {_human(total)} ({total} bytes)")
        return 0
    base = _named(root, args.name)
    out.print(f"Cache size of pipeline {args.name!r} ({base})", soft_wrap=True)
    parts = table("", "kind", "folder", "size")
    for run in _run_dirs(base):
        parts.add_row("run", run.name, _human(_usage(run)[0]))
    for store in _step_dirs(base):
        parts.add_row("step store", f"{STEPS}/{store.name}", _human(_usage(store)[0]))
    total = _usage(base)[0]
    out.print(parts)
    out.print(f"Total: {_human(total)} ({total} bytes)")
    return 0


@contextlib.contextmanager
def _locked(base: Path, then: str) -> Iterator[None]:
    """Hold the pipeline's run lock, or raise naming the run that holds it."""
    fd = lock.acquire(
        base,
        f"Pipeline {base.name!r} is running (pid {{pid}}) and holds its cache {base}. "
        f"Wait for it to finish or stop it, then {then}.",
    )
    try:
        yield
    finally:
        lock.release(fd)


def _cmd_remove(args: argparse.Namespace) -> int:
    base = _named(_root(args), args.name)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CacheError(
                f"Refusing to remove the cache of pipeline {args.name!r} ({base}) without "
                "confirmation. Add --yes."
            )
        answer = input(f"Remove {base} ({_human(_usage(base)[0])})? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            console().print("Nothing removed.")
            return 1
    with _locked(base, "remove the cache"):  # held while deleting: a run that starts now waits instead
        lock.remove_locked(base)
    console().print(f"Removed the cache of pipeline {args.name!r} ({base}).", soft_wrap=True)
    return 0


# -- prune -----------------------------------------------------------------------------------

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """`"7d"` -> seconds; units s, m, h, d, w."""
    match = _AGE.match(text.strip().lower())
    if not match:
        raise ValueError(
            f"--older-than {text!r} is not an age. Write a number and a unit: 30m, 12h, 7d, 2w."
        )
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _stores_of(run: Path) -> set[str]:
    """The step stores a run used (`steps/<store>`), as its batch_manager.json records."""
    try:
        steps = json.loads((run / "batch_manager.json").read_text()).get("steps", {})
    except (OSError, ValueError):
        return set()
    return {entry["store"] for entry in steps.values() if isinstance(entry, dict) and entry.get("store")}


def prune_plan(base: Path, older_than: float | None, keep_last: int | None, now: float) -> list[Path]:
    """What `cache prune` removes from one pipeline's cache.

    A run folder goes when it matches every condition given: last modified more than
    `older_than` seconds ago, and not among the `keep_last` most recently modified runs.
    A step store goes when no remaining run uses it and either a removed run used it or
    it is older than `older_than` (a store no run records, e.g. of a killed run, is kept
    until it is that old: it is what the next run resumes from). A step's lasting folder
    (its call record across versions) goes when it is older than `older_than`."""
    runs = sorted(_run_dirs(base), key=lambda run: _usage(run)[1], reverse=True)
    removed_runs = []
    for position, run in enumerate(runs):
        old = older_than is None or now - _usage(run)[1] > older_than
        beyond = keep_last is None or position >= keep_last
        if old and beyond:
            removed_runs.append(run)
    kept_stores = set().union(*(_stores_of(r) for r in runs if r not in removed_runs))
    dropped_stores = set().union(*(_stores_of(r) for r in removed_runs))
    removed_stores = []
    for store in _step_dirs(base):
        ref = f"{STEPS}/{store.name}"
        if ref in kept_stores:
            continue
        stale = older_than is not None and now - _usage(store)[1] > older_than
        if ref in dropped_stores or stale:
            removed_stores.append(store)
    removed_lasting = [
        folder for folder in _lasting_dirs(base)
        if older_than is not None and now - _usage(folder)[1] > older_than
    ]
    return removed_runs + removed_stores + removed_lasting


def _cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than is None and args.keep_last is None:
        raise ValueError("Say what to prune: --older-than AGE (e.g. 7d), --keep-last N, or both.")
    if args.keep_last is not None and args.keep_last < 0:
        raise ValueError(f"--keep-last {args.keep_last!r} must be 0 or more.")
    older_than = parse_age(args.older_than) if args.older_than is not None else None
    root, out = _root(args), console()
    bases = [_named(root, args.name)] if args.name else _pipelines(root)
    now, freed, count = time.time(), 0, 0
    for base in bases:
        try:
            with _locked(base, "prune again"):
                for path in prune_plan(base, older_than, args.keep_last, now):
                    size = _usage(path)[0]
                    verb = "would remove" if args.dry_run else "removed"
                    if not args.dry_run:
                        shutil.rmtree(path)
                    out.print(f"{verb} {base.name}/{path.relative_to(base)} ({_human(size)})",
                              soft_wrap=True)
                    freed, count = freed + size, count + 1
                if not args.dry_run and not _run_dirs(base) and not _step_dirs(base):
                    lock.remove_locked(base)  # nothing left but the lock: the pipeline is gone
        except CacheLockedError as exc:
            out.print(f"skipped {base.name}: {exc}", soft_wrap=True)
    what = "Would free" if args.dry_run else "Freed"
    out.print(f"{what} {_human(freed)} ({freed} bytes) in {count} folder(s).")
    return 0


# -- explain ---------------------------------------------------------------------------------


def _batches_stored(directory: Path) -> int:
    """Count batch records from the log's headers, read-only (RecordLog would repair)."""
    path = directory / LOG
    if not path.exists():
        return 0
    try:
        return sum(header.kind == BATCH for header in iter_headers(path, check_last=False))
    except CorruptCacheError:
        return 0


def _plain_json(value: Any) -> Any:
    # meta.json went through json with default=str: compare like with like.
    return json.loads(json.dumps(value, default=str))


def _latest_other_store(base: Path, name: str, directory: Path) -> dict[str, Any] | None:
    candidates = []
    for store in _step_dirs(base):
        if store == directory or not store.name.startswith(f"{name}-"):
            continue
        meta = read_meta(store)
        if meta is not None and meta.get("step") == name:
            candidates.append(((store / META).stat().st_mtime, meta))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def explain(pipeline: Any, use_cache: bool = True, table: Any = None, plan: Any = None) -> list[dict[str, str]]:
    """`[{step, decision, why}]` in topological order: what a run would do with the cache.

    The decision is `reuse.decide`'s, the rule the stores themselves follow; this only
    adds detail to its reason (which part of a signature changed, which step before).
    `table`: `signature_table(pipeline.dag, ...)` and `plan`: the run's `ExecutionPlan`, when
    the caller has them already."""
    from stillhouse.core.engine.plan import compile_plan
    from stillhouse.core.engine.run import fresh_steps

    dag, base = pipeline.dag, pipeline_dir(pipeline)
    fresh = fresh_steps(pipeline, use_cache)
    signatures, all_parts = table or signature_table(dag, enable_metadata=pipeline.enable_metadata)
    region_of = (plan or compile_plan(dag)).region_of
    generations: dict[str, str | None] = {}  # None: recomputed, so a new generation
    rows = []
    for name in dag.topological_order():
        step = dag.get_step(name)
        directory = step_dir(base, name, signatures[name])
        meta = read_meta(directory) if directory.is_dir() else None
        preds = dag.predecessors(name)
        recomputed_preds = [p for p in preds if generations[p] is None]
        decision = decide(
            meta,
            signature=signatures[name],
            predecessors={p: generations[p] for p in preds},  # type: ignore[misc]
            batching=None if step.is_generator else getattr(step, "input_batch_size", None),
            keyed=region_of[name] is not None,
            fresh=_fresh_reason(step, use_cache) if name in fresh else None,
            holdings=lambda d=directory: log_holdings(d / LOG, count=True),
        )
        why = decision.reason
        if meta is None and name not in fresh:
            why = _why_new(dag, base, name, directory, all_parts[name], recomputed_preds)
        elif name not in fresh and decision.action == "recompute" and recomputed_preds and meta.get("predecessors") != {
            p: generations[p] for p in preds
        }:
            why = f"a step before it is recomputed ({', '.join(recomputed_preds)})"
        elif decision.damaged:
            why = f"{why} ({directory / LOG})"
        action = decision.action
        if action == "resume":
            action = f"resume ({_batches_stored(directory)} batches stored)"
        generations[name] = meta["generation"] if decision.action != "recompute" and meta else None
        rows.append({"step": name, "decision": action, "why": why})
    return rows


def _fresh_reason(step: Any, use_cache: bool) -> str:
    if not use_cache:
        return "--ignore-cache"
    return "use_cache=False on this step" if not step.use_cache else "use_cache=False on a step before it"


def _why_new(dag: Any, base: Path, name: str, directory: Path, step_parts: dict[str, Any],
             recomputed_preds: list[str]) -> str:
    """Why a step has no store of its own signature: new, or which part of it changed."""
    other = _latest_other_store(base, name, directory)
    parts = _plain_json(step_parts)
    if other is None:
        return "new step"
    if not other.get("parts"):
        return "its signature changed (the stored outputs do not record why)"
    reasons = explain_changes(other["parts"], parts) or ["its signature changed"]
    if recomputed_preds:
        reasons = [
            f"a step before it changed ({', '.join(recomputed_preds)})"
            if r == "a step before it changed" else r for r in reasons
        ]
    return "; ".join(reasons)


def _cmd_explain(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.config)
    parameters = parse_params(args.param)
    if parameters:
        pipeline.apply_parameters(parameters)
    if args.cache_dir:
        pipeline.cache_dir = args.cache_dir
    root = str(pipeline.cache_dir)
    if "://" in root and not root.startswith("file://"):
        raise CacheError(
            f"The cache {root!r} is remote (an fsspec URL): `stillhouse cache explain` reads "
            "local cache folders only (a run with this cache_dir works, and logs what it "
            "reuses as it starts); pass a local --cache-dir."
        )
    out = console()
    run_dir = pipeline_dir(pipeline) / pipeline.signature
    state = "has a run folder" if run_dir.is_dir() else "has never run in this shape"
    out.print(f"Pipeline {pipeline.name!r} (signature {pipeline.signature[:12]}) {state}: "
              f"{run_dir}", soft_wrap=True)
    decisions = table("Cache decisions", "step", "decision", "why")
    for row in explain(pipeline, use_cache=not args.ignore_cache):
        decisions.add_row(row["step"], row["decision"], row["why"])
    out.print(decisions)
    return 0


# -- registration ------------------------------------------------------------------------


def _add_cache_dir(parser: argparse.ArgumentParser, default_text: str) -> None:
    parser.add_argument("--cache-dir", metavar="DIR", help=f"cache root (default: {default_text})")


def register(subparsers: Any) -> None:
    """Add `stillhouse cache ...` to the CLI (called from the `register_cli` hook)."""
    env_default = f"${CACHE_DIR_ENV} or {DEFAULT_CACHE_DIR}"
    group = subparsers.add_parser("cache", help="list, measure, remove and explain cached runs")
    commands = group.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    listing = commands.add_parser("list", help="cached pipelines with their runs and sizes")
    _add_cache_dir(listing, env_default)
    listing.set_defaults(handler=_cmd_list)

    size = commands.add_parser("size", help="disk use of the cache, or of one pipeline")
    size.add_argument("name", nargs="?", metavar="NAME", help="a pipeline name")
    _add_cache_dir(size, env_default)
    size.set_defaults(handler=_cmd_size)

    remove = commands.add_parser("remove", help="delete a pipeline's cache (not while it runs)")
    remove.add_argument("name", metavar="NAME", help="the pipeline name")
    remove.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    _add_cache_dir(remove, env_default)
    remove.set_defaults(handler=_cmd_remove)

    prune = commands.add_parser(
        "prune", help="remove old runs and the step outputs only they used (not while running)"
    )
    prune.add_argument("name", nargs="?", metavar="NAME", help="only this pipeline")
    prune.add_argument("--older-than", metavar="AGE",
                       help="remove what was last modified longer ago than AGE (30m, 12h, 7d, 2w)")
    prune.add_argument("--keep-last", type=int, metavar="N",
                       help="keep the N most recently modified runs of each pipeline")
    prune.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    _add_cache_dir(prune, env_default)
    prune.set_defaults(handler=_cmd_prune)

    why = commands.add_parser("explain", help="which steps a run would reuse, resume or recompute")
    why.add_argument("--config", required=True, metavar="PATH_OR_URL", help="pipeline.yaml")
    add_param_option(why)
    why.add_argument("--ignore-cache", action="store_true", help="as `pipeline run --ignore-cache`")
    _add_cache_dir(why, "the pipeline's cache_dir")
    why.set_defaults(handler=_cmd_explain)
