"""stillhouse.core.testing: run a step's batch without a pipeline."""

from __future__ import annotations

from stillhouse.core.steps import KeepColumns, LoadDataFromDicts
from stillhouse.core.testing import Constant, Identity, run_generator, run_step


def test_run_step_applies_mappings_like_a_worker():
    step = Constant(name="c", column="label", value=1, output_mappings={"label": "score"})
    assert run_step(step, [{"x": 1}, {"x": 2}]) == [{"x": 1, "score": 1}, {"x": 2, "score": 1}]


def test_run_step_imputes_none_when_process_fails():
    class Broken(Constant):
        def process(self, inputs):
            raise RuntimeError("nope")
            yield inputs

    rows = run_step(Broken(name="b", column="out"), [{"x": 1}], enable_metadata=True)
    assert rows == [{"x": 1, "out": None, "stillhouse_metadata": {"error_b": "RuntimeError: nope"}}]


def test_identity_concatenates_its_inputs_and_builtins_work():
    assert run_step(Identity(name="i"), [{"a": 1}], [{"a": 2}]) == [{"a": 1}, {"a": 2}]
    assert run_step(KeepColumns(name="k", columns=["a"]), [{"a": 1, "b": 2}]) == [{"a": 1}]


def test_run_generator_yields_batches_from_an_offset():
    loader = LoadDataFromDicts(name="l", data=[{"x": i} for i in range(5)], batch_size=2)
    assert run_generator(loader) == [[{"x": 0}, {"x": 1}], [{"x": 2}, {"x": 3}], [{"x": 4}]]
    assert run_generator(loader, offset=3) == [[{"x": 3}, {"x": 4}]]
    assert run_generator(loader, max_batches=1) == [[{"x": 0}, {"x": 1}]]
