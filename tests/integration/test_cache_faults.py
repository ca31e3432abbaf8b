"""Fault injection (issue 13): damage each kind of cache file, run again.

Every run either returns exactly the reference rows or fails with a stillhouse error
naming the damaged file; never fewer rows. A damaged result file (which can be rebuilt
from the checkpoints) never fails at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.errors import StillhouseError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import Double, Tag

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def build(cache: Path, tag: str = "a") -> Pipeline:
    with Pipeline(name="faults", cache_dir=cache, executor="sync") as pipeline:
        loader = LoadDataFromDicts(name="load", data=[{"x": i, "text": f"row {i}"} for i in range(40)], batch_size=7)
        loader >> Double(name="double", input_batch_size=6) >> Tag(name="tag", tag=tag, input_batch_size=9)
    return pipeline


def run_dir(cache: Path) -> Path:
    return next(p for p in (cache / "faults").iterdir() if p.is_dir() and p.name not in ("steps", "lasting"))


def store(step: str) -> Callable[[Path], Path]:
    return lambda cache: next((cache / "faults" / "steps").glob(f"{step}-*"))


FILES: dict[str, Callable[[Path], Path]] = {
    **{f"{step}/meta.json": (lambda s: lambda c: store(s)(c) / "meta.json")(step) for step in ("load", "double", "tag")},
    **{f"{step}/batches.log": (lambda s: lambda c: store(s)(c) / "batches.log")(step) for step in ("load", "double", "tag")},
    "data/tag/*.parquet": lambda cache: sorted((run_dir(cache) / "data" / "tag").glob("*.parquet"))[0],
    "unified arrow file": lambda cache: next((run_dir(cache) / "data" / "tag").glob(".unified-*.arrow")),
    "unified check file": lambda cache: next((run_dir(cache) / "data" / "tag").glob(".unified-*.check")),
    "_COMPLETE": lambda cache: run_dir(cache) / "data" / "tag" / "_COMPLETE",
    "batch_manager.json": lambda cache: run_dir(cache) / "batch_manager.json",
    "pipeline.yaml": lambda cache: run_dir(cache) / "pipeline.yaml",
    "stages.json": lambda cache: run_dir(cache) / "stages.json",
}
RESULT_FILES = {"data/tag/*.parquet", "unified arrow file", "unified check file", "_COMPLETE"}


def damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # flip bytes in the middle
        for offset in range(len(data) // 2, min(len(data), len(data) // 2 + 3)):
            data[offset] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("reference")
    return {tag: rows_of(build(tmp / tag, tag).run(use_cache=False, progress=False)) for tag in ("a", "b")}


CASES = [
    (kind, how, rerun)
    for kind in FILES
    for how in ("truncate", "flip", "delete")
    # An edited leaf rewrites its results whatever their state: only the same rerun reads them.
    for rerun in (("same",) if kind in RESULT_FILES else ("same", "edited leaf"))
]


@pytest.mark.parametrize(("kind", "how", "rerun"), CASES)
def test_a_damaged_cache_file_gives_the_reference_rows_or_an_error_naming_it(tmp_path, references, kind, how, rerun):
    cache = tmp_path / "cache"
    assert rows_of(build(cache).run(progress=False)) == references["a"]
    path = FILES[kind](cache)
    damage(path, how)
    tag = "a" if rerun == "same" else "b"  # "b" re-reads double's stored batches
    for _attempt in range(2):
        try:
            rows = rows_of(build(cache, tag).run(progress=False))
        except StillhouseError as exc:
            assert kind not in RESULT_FILES, f"results are rebuilt from checkpoints, not an error: {exc}"
            assert str(path) in str(exc) or str(path.parent) in str(exc), f"{exc} does not name {path}"
            assert "use_cache=False" in str(exc)
            continue
        assert rows == references[tag]
