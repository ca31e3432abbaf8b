"""The upstream-row bookkeeping behind per-batch fan-in alignment (engine/state.py).

Each released batch tells its successor which upstream rows it derives from; a step
with several predecessors compares, at every upstream position all of them have
settled, how many rows each sent for the rows before it.
"""

from __future__ import annotations

from stillhouse.core.engine.state import Lineage, OriginTrace


def rows(n: int) -> list[dict]:
    return [{} for _ in range(n)]


def test_equal_totals_with_a_drop_then_a_duplicate_are_found():
    lineage = Lineage.for_preds(["shifty", "steady"])
    lineage.add("shifty", rows(2), ("load", 0, 3, True))  # dropped one
    lineage.add("shifty", rows(4), ("load", 3, 6, True))  # duplicated one
    lineage.add("steady", rows(6), ("load", 0, 6, True))
    lineage.closed |= {"shifty", "steady"}
    assert lineage.misalignment() == (3, {"shifty": 2, "steady": 3})


def test_aligned_predecessors_with_other_batch_sizes_agree():
    lineage = Lineage.for_preds(["a", "b"])
    for start in range(0, 12, 3):
        lineage.add("a", rows(3), ("load", start, start + 3, True))
    for start in range(0, 12, 4):
        lineage.add("b", rows(4), ("load", start, start + 4, True))
    lineage.closed |= {"a", "b"}
    assert lineage.misalignment() is None
    assert lineage.verified == 12


def test_a_cut_through_a_filtered_segment_is_not_taken_as_exact():
    trace = OriginTrace()
    trace.add(("load", 0, 4, True), 2)  # a filter kept 2 of 4
    trace.add(("load", 4, 8, True), 2)
    assert trace.take(3) == ("load", 0, 8, False)  # the third row may come from 4..8
    assert trace.take(1) == ("load", 4, 8, False)
    assert trace.rows_before(4) == 2 and trace.rows_before(2) is None


def test_unknown_or_different_roots_are_not_compared():
    lineage = Lineage.for_preds(["replayed", "computed"])
    lineage.add("replayed", rows(3), None)
    lineage.add("computed", rows(2), ("load", 0, 3, True))
    assert lineage.misalignment() is None
    other = Lineage.for_preds(["left", "right"])
    other.add("left", rows(2), ("gen_a", 0, 2, True))
    other.add("right", rows(2), ("gen_b", 0, 4, False))
    _, span = other.take(2)
    assert span == (None, 0, 2, True) and other.misalignment() is None
