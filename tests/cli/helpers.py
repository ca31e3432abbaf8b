"""Pipelines and file edits the CLI tests share."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.steps import Double, DropOdd, Tag

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "stillhouse"  # the console script uv installed
TIMEOUT = 120.0


def build(name: str = "clidemo", tag: str = "a", executor: str = "sync") -> Pipeline:
    """load (10 rows) >> double >> [tag (10 rows), drop_odd (5 rows)]."""
    with Pipeline(name=name, executor=executor) as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(10)], batch_size=4)
        double = Double(name="double", input_batch_size=3)
        load >> double >> [Tag(name="tag", tag=tag), DropOdd(name="drop_odd")]
    return pipeline


def edit_yaml(path: Path, step: str, **fields: object) -> None:
    """Change fields of one step in a saved pipeline file, as a user editing it would."""
    data = yaml.safe_load(path.read_text())
    for entry in data["pipeline"]["steps"]:
        if entry["name"] == step:
            entry["step"].update(fields)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def run_dir(stdout: str) -> Path:
    line = next(line for line in stdout.splitlines() if line.startswith("Cache: "))
    return Path(line.removeprefix("Cache: ").strip())


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of every rich table in `stdout`, as lists of stripped cells."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in stdout.splitlines()
        if line.startswith("│")
    ]
