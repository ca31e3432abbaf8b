"""Another git revision of stillhouse, measured beside the workspace's (`--compare REF`).

The revision's `packages/` tree is exported with `git archive` into a temporary
folder (no `git worktree`: nothing is registered in the repository) and compiled to
bytecode once. Its columns run with the workspace's interpreter and dependencies,
with `PYTHONPATH` naming the revision's `packages/*/src` folders first; the worker
drops the workspace's own source folders from `sys.path` (`HIDE_ENV`), so every
`stillhouse.*` module comes from the revision. Entry points (plugin registration)
are read from the workspace's installed metadata: a revision whose plugin entry
points differ from the workspace's cannot be compared this way.
"""

from __future__ import annotations

import compileall
import io
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HIDE_ENV = "BENCH_HIDE_SOURCES"
"""Set for a revision's worker: `sys.path` entries under this folder are removed."""


@dataclass(frozen=True)
class Revision:
    ref: str  # as given on the command line
    commit: str  # short hash
    paths: tuple[str, ...]  # its packages' src folders, for PYTHONPATH

    @property
    def env(self) -> tuple[tuple[str, str], ...]:
        return ((HIDE_ENV, str(ROOT / "packages")),)


class RevisionError(RuntimeError):
    pass


def _git(*args: str) -> bytes:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=120)
    if done.returncode != 0:
        raise RevisionError(f"`git {' '.join(args)}` failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def export(ref: str, into: Path) -> Revision:
    """Export `ref`'s packages into `into` (created) and compile them."""
    try:
        commit = _git("rev-parse", "--short", f"{ref}^{{commit}}").decode().strip()
    except RevisionError as exc:
        raise RevisionError(f"--compare {ref!r} is not a commit of this repository: {exc}") from None
    archive = _git("archive", "--format=tar", commit, "packages")
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    sources = sorted(str(p) for p in (into / "packages").glob("*/src") if p.is_dir())
    if not sources:
        raise RevisionError(f"{ref!r} ({commit}) has no packages/*/src folders to import stillhouse from")
    for source in sources:  # users have bytecode; the warm-up would write it too, uncounted
        compileall.compile_dir(source, quiet=1)
    return Revision(ref, commit, tuple(sources))
