"""Fan-in alignment holds per upstream row, not per total count (SPEC §1, issue 13.4).

A step with several predecessors pairs row i of each. When one predecessor drops a
row in one batch and duplicates one in the next, the totals still match but every
row in between would meet the wrong partner: the run must fail with
`MisalignedInputsError` naming the step, its predecessors and their row counts.
Predecessors that keep their rows aligned (whatever their batch sizes, a filter or
expander shared upstream, an expander on every branch, two generators, outputs
replayed from the cache) keep working.
"""

from __future__ import annotations

import pytest

from stillhouse.core import Pipeline, StepInput, StepOutput, step
from stillhouse.core.errors import MisalignedInputsError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.steps import Double, DropOdd, Ok, Tag, Zip

EXECUTORS = ["sync", "threaded", "mp"]


@step(inputs=["x"], outputs=["x"])
def DropOneDuplicateOne(inputs: StepInput, drop: int = 1, duplicate: int = 4) -> StepOutput:
    """Same total as its input: row `drop` is lost, row `duplicate` comes twice."""
    out = []
    for row in inputs:
        if row["x"] != drop:
            out.append(row)
        if row["x"] == duplicate:
            out.append(dict(row))
    yield out


@step(inputs=["x"], outputs=["x"])
def Twice(inputs: StepInput) -> StepOutput:
    yield [dict(row, copy=i) for row in inputs for i in range(2)]


def rows_of(distiset, leaf: str = "default") -> list[dict]:
    return distiset[leaf]["train"].to_list()


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("sizes", [(4, 4, 4), (3, 5, 4), (6, 2, 5)])
def test_dropping_one_row_and_duplicating_another_is_misaligned(tmp_path, executor, sizes):
    load_size, branch_size, join_size = sizes
    with Pipeline(name="misaligned", cache_dir=tmp_path, executor=executor) as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(12)], batch_size=load_size)
        shifty = DropOneDuplicateOne(name="shifty", input_batch_size=branch_size, drop=1, duplicate=7)
        steady = Tag(name="steady", input_batch_size=5)
        load >> [shifty, steady] >> Zip(name="join", input_batch_size=join_size)
    with pytest.raises(MisalignedInputsError) as caught:
        pipeline.run(progress=False)
    message = str(caught.value)
    assert caught.value.step_name == "join"
    assert "'join'" in message and "'shifty'" in message and "'steady'" in message
    assert "not aligned" in message and "rows" in message
    assert "wrong partners" in message


@pytest.mark.parametrize("executor", EXECUTORS)
def test_aligned_predecessors_with_different_batch_sizes_still_join(tmp_path, executor):
    with Pipeline(name="aligned", cache_dir=tmp_path, executor=executor) as pipeline:
        load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(40)], batch_size=7)
        kept = DropOdd(name="evens", input_batch_size=6)  # a filter shared by both branches
        a, b, c = Double(name="a", input_batch_size=3), Tag(name="b", input_batch_size=5), Twice(name="c", input_batch_size=4)
        d = Twice(name="d", input_batch_size=9)
        load >> kept >> [a, b] >> Zip(name="join", input_batch_size=4)
        load >> [c, d] >> Zip(name="pairs", input_batch_size=6)  # an expander on every branch
    distiset = pipeline.run(progress=False)
    joined = rows_of(distiset, "join")
    assert [row["x"] for row in joined] == list(range(0, 40, 2))
    assert all(row["y"] == 2 * row["x"] for row in joined)
    pairs = rows_of(distiset, "pairs")
    assert [(row["x"], row["copy"]) for row in pairs] == [(x, i) for x in range(40) for i in range(2)]


@pytest.mark.parametrize("executor", ["sync", "threaded"])
def test_two_generators_with_different_batch_sizes_join_by_position(tmp_path, executor):
    with Pipeline(name="generators", cache_dir=tmp_path, executor=executor) as pipeline:
        left = LoadDataFromDicts(name="left", data=[{"x": i} for i in range(17)], batch_size=4)
        right = LoadDataFromDicts(name="right", data=[{"z": -i} for i in range(17)], batch_size=6)
        [left, right] >> Zip(name="join", input_batch_size=5)
    rows = rows_of(pipeline.run(progress=False))
    assert [(row["x"], row["z"]) for row in rows] == [(i, -i) for i in range(17)]


@pytest.mark.parametrize("executor", ["sync", "threaded"])
def test_rows_of_different_generators_pair_by_position_even_after_a_filter(tmp_path, executor):
    """No row of `left` derives from a row of `right`: the filtered rows of one pair with the
    rows of the other in order, as before; below the join, alignment is checked again."""
    with Pipeline(name="by-position", cache_dir=tmp_path, executor=executor) as pipeline:
        left = LoadDataFromDicts(name="left", data=[{"z": -i} for i in range(10)], batch_size=3)
        right = LoadDataFromDicts(name="right", data=[{"x": i} for i in range(20)], batch_size=4)
        evens = DropOdd(name="evens", input_batch_size=6)
        join = Zip(name="join", input_batch_size=4)
        [left, right >> evens] >> join
        join >> [Double(name="a", input_batch_size=3), Ok(name="b", input_batch_size=7)] >> Zip(name="again")
    rows = rows_of(pipeline.run(progress=False))
    assert [(row["z"], row["x"], row["y"]) for row in rows] == [(-i, 2 * i, 4 * i) for i in range(10)]


def test_below_a_join_of_two_generators_misalignment_is_still_found(tmp_path):
    with Pipeline(name="below-join", cache_dir=tmp_path, executor="sync") as pipeline:
        left = LoadDataFromDicts(name="left", data=[{"z": -i} for i in range(12)], batch_size=5)
        right = LoadDataFromDicts(name="right", data=[{"x": i} for i in range(12)], batch_size=3)
        join = Zip(name="join", input_batch_size=4)
        shifty = DropOneDuplicateOne(name="shifty", input_batch_size=4, drop=2, duplicate=9)
        [left, right] >> join >> [shifty, Ok(name="steady", input_batch_size=6)] >> Zip(name="again")
    with pytest.raises(MisalignedInputsError, match=r"'again'.*'shifty'.*'steady'.*not aligned"):
        pipeline.run(progress=False)


def test_predecessors_replayed_from_the_cache_still_join(tmp_path):
    """A finished predecessor is replayed from its store without its inputs: the join it
    feeds, recomputed after an edit, must still work (nothing to check, nothing refused)."""

    def build(tag: str) -> Pipeline:
        with Pipeline(name="replayed", cache_dir=tmp_path, executor="sync") as pipeline:
            load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(20)], batch_size=6)
            evens = DropOdd(name="evens", input_batch_size=4)
            load >> evens >> [Double(name="a", input_batch_size=3), Tag(name="b", tag=tag)]
            pipeline.dag.get_step("a").connect(Zip(name="join", input_batch_size=4))
            pipeline.dag.get_step("b").connect(pipeline.dag.get_step("join"))
        return pipeline

    first = rows_of(build("one").run(progress=False))
    again = build("two")  # b and join are recomputed, a is replayed from its store
    rows = rows_of(again.run(progress=False))
    assert [row["x"] for row in rows] == [row["x"] for row in first] == list(range(0, 20, 2))
    assert {row["z"] for row in rows} == {"two"}
    assert all(row["y"] == 2 * row["x"] for row in rows)
