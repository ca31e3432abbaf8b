"""Random edit sequences against a from-scratch reference (issue 13.1, SPEC.md §3).

Each run edits one thing of the last pipeline (a field, the input data, a step's
code, a batch size, a step added or removed) or goes back to an earlier version
(A -> B -> A); every run, on the one cache, must return exactly what the same
pipeline returns computed from nothing.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import DropOdd, Tag

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

EDITS = 7
CODE = '''
from stillhouse.core import StepInput, step


@step(inputs=["x"], outputs=["v"])
def Edited(inputs: StepInput):
    for row in inputs:
        row["v"] = row["x"] * {factor} + {offset}
    yield inputs
'''
START = {"rows": 11, "start": 0, "tag": "a", "code": 1, "load_bs": 4, "ibs": 3, "drop": False, "extra": False}


def edit(config: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    config = dict(config)
    kind = rng.choice(["field", "data", "code", "batch", "steps"])
    if kind == "field":
        config["tag"] = rng.choice([t for t in "abc" if t != config["tag"]])
    elif kind == "data":
        config[rng.choice(["rows", "start"])] += rng.choice([-2, 1, 3])
        config["rows"] = max(config["rows"], 1)
    elif kind == "code":
        config["code"] = rng.choice([c for c in (1, 2, 3) if c != config["code"]])
    elif kind == "batch":
        config[rng.choice(["load_bs", "ibs"])] = rng.choice([2, 3, 5, 50])
    else:
        which = rng.choice(["drop", "extra"])
        config[which] = not config[which]
    return config


def code_module(folder: Path, version: int) -> Any:
    """The module `edited_step`, its source at `version` (same file, edited in place)."""
    path = folder / "edited_step.py"
    # Different lengths per version: a file rewritten within one mtime tick stays fresh.
    path.write_text(CODE.format(factor=version, offset=" + 0" * version))
    spec = importlib.util.spec_from_file_location("edited_step", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["edited_step"] = module
    spec.loader.exec_module(module)
    return module


def build(cache: Path, executor: str, config: dict[str, Any], code_dir: Path) -> Pipeline:
    module = code_module(code_dir, config["code"])
    data = [{"x": config["start"] + i} for i in range(config["rows"])]
    with Pipeline(name="edits", cache_dir=cache, executor=executor) as pipeline:
        loader = LoadDataFromDicts(name="load", data=data, batch_size=config["load_bs"])
        head = loader
        if config["drop"]:
            head = DropOdd(name="drop", input_batch_size=config["ibs"])
            loader >> head
        edited = module.Edited(name="edited", input_batch_size=config["ibs"])
        head >> edited >> Tag(name="tag", tag=config["tag"], input_batch_size=config["ibs"] + 1)
        if config["extra"]:
            edited >> Tag(name="extra", tag="e" + config["tag"])
    return pipeline


def results(pipeline: Pipeline, **kwargs: Any) -> dict[str, list[dict[str, Any]]]:
    result = pipeline.run(progress=False, **kwargs)
    return {leaf: rows_of(result, leaf) for leaf in pipeline.dag.leaves}


@pytest.mark.parametrize("executor", ["sync", "threaded", "mp"])
def test_random_edit_sequences_return_the_live_pipelines_rows(tmp_path, monkeypatch, executor):
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    monkeypatch.syspath_prepend(str(code_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(code_dir), os.environ.get("PYTHONPATH", "")]))
    rng = random.Random(f"edits-{executor}")
    history = [START]
    config = START
    for number in range(EDITS + 1):
        if number:
            config = rng.choice(history[:-1]) if len(history) > 1 and rng.random() < 0.35 else edit(config, rng)
            history.append(config)
        expected = results(build(tmp_path / f"ref-{number}", "sync", config, code_dir), use_cache=False)
        got = results(build(tmp_path / "cache", executor, config, code_dir))
        assert got == expected, f"run {number} with {config} (history {history})"
    assert len({tuple(sorted(c.items())) for c in history}) > 3
