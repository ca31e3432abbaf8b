"""The benchmark pipelines, written once for both engines.

stillhouse copies distilabel 1.x's API, so the same step classes and builders run on
either: only the imports differ, chosen by `BENCH_ENGINE` ("stillhouse" or
"distilabel"). Steps are module-level classes so worker processes can import them.
No `from __future__ import annotations` here: distilabel finds a step's inputs by the
evaluated `StepInput` annotation of `process`.
"""

import os
from typing import Any

from benchmarks import work

ENGINE = os.environ.get("BENCH_ENGINE", "stillhouse")

if ENGINE == "distilabel":
    from distilabel.pipeline import Pipeline, sample_n_steps
    from distilabel.steps import GeneratorStep, GlobalStep, LoadDataFromDicts, Step, StepInput
else:
    from stillhouse.core import GeneratorStep, GlobalStep, Pipeline, Step, StepInput, sample_n_steps
    from stillhouse.core.steps import LoadDataFromDicts


class Rows(GeneratorStep):
    """Makes `rows` rows on the fly (nothing is held in the pipeline definition)."""

    rows: int = 100
    text_bytes: int = 0

    @property
    def outputs(self) -> list[str]:
        return ["x", "text"] if self.text_bytes else ["x"]

    def process(self, offset: int = 0) -> Any:
        size = self.batch_size or 50
        if offset >= self.rows:
            yield [], True
            return
        for start in range(offset, self.rows, size):
            count = min(size, self.rows - start)
            yield work.make_rows(start, count, self.text_bytes), start + count >= self.rows


class AddOne(Step):
    column: str = "a"

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return [self.column]

    def process(self, inputs: StepInput) -> Any:
        yield work.add_one(inputs, self.column)


class Burn(Step):
    iterations: int = 10_000

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["burn"]

    def process(self, inputs: StepInput) -> Any:
        yield work.burn(inputs, self.iterations)


class Zip(Step):
    """Fan-in (one list per predecessor) and convergence (one list per routed branch)."""

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["x"]

    def process(self, *inputs: StepInput) -> Any:
        yield work.zip_rows(inputs)


class Total(GlobalStep):
    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["n_total"]

    def process(self, inputs: StepInput) -> Any:
        yield work.total(inputs)


class Mark(Step):
    sleep: float = 0.0

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["done"]

    def process(self, inputs: StepInput) -> Any:
        yield work.mark(inputs, self.sleep)


# -- builders: (name, cache_dir, executor, params) -> Pipeline --------------------------


def _pipeline(name: str, cache_dir: str, executor: str) -> Any:
    options = {"executor": executor} if ENGINE == "stillhouse" else {}
    return Pipeline(name=name, cache_dir=cache_dir, **options)


def startup(cache_dir: str, executor: str, p: dict[str, Any]) -> Any:
    """`LoadDataFromDicts` of `rows` rows >> one trivial step."""
    with _pipeline("startup", cache_dir, executor) as pipeline:
        rows = work.make_rows(0, p["rows"])
        LoadDataFromDicts(data=rows, batch_size=p["batch"]) >> AddOne(input_batch_size=p["batch"])
    return pipeline


def chain(cache_dir: str, executor: str, p: dict[str, Any]) -> Any:
    """Generator >> two trivial steps (overhead, scaling, memory, cached)."""
    with _pipeline("chain", cache_dir, executor) as pipeline:
        source = Rows(rows=p["rows"], text_bytes=p.get("text_bytes", 0), batch_size=p["batch"])
        first = AddOne(name="first", column="a", input_batch_size=p["batch"])
        second = AddOne(name="second", column="b", input_batch_size=p["batch"])
        source >> first >> second
    return pipeline


def topology(cache_dir: str, executor: str, p: dict[str, Any]) -> Any:
    """Fan-out to 3, fan-in, `sample_n_steps(2)` over 3 branches, convergence, global."""
    batch = p["batch"]
    with _pipeline("topology", cache_dir, executor) as pipeline:
        source = Rows(rows=p["rows"], batch_size=batch)
        fan_out = [AddOne(name=f"out_{c}", column=c, input_batch_size=batch) for c in "abc"]
        fan_in = Zip(name="fan_in", input_batch_size=batch)
        branches = [AddOne(name=f"branch_{c}", column=c, input_batch_size=batch) for c in "def"]
        converge = Zip(name="converge", input_batch_size=batch)
        source >> fan_out >> fan_in >> sample_n_steps(2) >> branches >> converge >> Total(name="total")
    return pipeline


def replicas(cache_dir: str, executor: str, p: dict[str, Any]) -> Any:
    """Generator >> a CPU-bound step with `replicas` replicas."""
    with _pipeline("replicas", cache_dir, executor) as pipeline:
        source = Rows(rows=p["rows"], batch_size=p["batch"])
        burn = Burn(
            iterations=p["iterations"], input_batch_size=p["batch"], resources={"replicas": p["replicas"]}
        )
        source >> burn
    return pipeline


def resume(cache_dir: str, executor: str, p: dict[str, Any]) -> Any:
    """Generator >> trivial step >> a leaf that waits `sleep` per batch and marks progress."""
    with _pipeline("resume", cache_dir, executor) as pipeline:
        source = Rows(rows=p["rows"], batch_size=p["batch"])
        first = AddOne(name="first", column="a", input_batch_size=p["batch"])
        leaf = Mark(name="leaf", sleep=p["sleep"], input_batch_size=p["batch"])
        source >> first >> leaf
    return pipeline


BUILDERS = {"startup": startup, "chain": chain, "topology": topology, "replicas": replicas, "resume": resume}
