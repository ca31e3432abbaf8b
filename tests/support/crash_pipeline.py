"""A pipeline with routing, fan-in, a global step and replicas, runnable as a script.

`python -m tests.support.crash_pipeline CACHE_DIR EXECUTOR OUT_JSON [async]` runs it with
the cache and writes every leaf's rows to OUT_JSON; the resume tests kill it at random.
With `async`, the slow step, one branch and the fan-in are async steps (same rows).
"""

from __future__ import annotations

import json
import sys

from stillhouse.core import Pipeline, sample_n_steps
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import AsyncSlow, AsyncTag, AsyncZip, Count, Double, Slow, Tag, Zip

ROWS = 240


def build(cache_dir: str, executor: str, use_async: bool = False) -> Pipeline:
    slow_class, tag_class, zip_class = (AsyncSlow, AsyncTag, AsyncZip) if use_async else (Slow, Tag, Zip)
    with Pipeline(name="crash", cache_dir=cache_dir, executor=executor) as pipeline:
        loader = LoadDataFromDicts(data=[{"x": i} for i in range(ROWS)], batch_size=16)
        double = Double(name="double", input_batch_size=10)
        slow = slow_class(name="slow", sleep=0.08, input_batch_size=6, resources={"replicas": 2})
        branches = [
            (tag_class if t == "b" else Tag)(name=f"tag_{t}", tag=t, sleep=0.02, input_batch_size=s)
            for t, s in (("a", 4), ("b", 7), ("c", 5))
        ]
        join = Zip(name="join", input_batch_size=9)
        side = Slow(name="side", sleep=0.01, input_batch_size=8)
        fan_in = zip_class(name="fan_in", input_batch_size=11)
        total = Count(name="total")
        loader >> double >> slow >> sample_n_steps(2) >> branches >> join
        [join, side] >> fan_in
        loader >> side
        fan_in >> total
        fan_in >> Tag(name="final", tag="f", input_batch_size=13)
    return pipeline


def main() -> None:
    cache_dir, executor, out = sys.argv[1:4]
    use_async = sys.argv[4:5] == ["async"]
    result = build(cache_dir, executor, use_async).run(use_cache=True, progress=False)
    leaves = {leaf: rows_of(result, leaf) for leaf in ("final", "total")}
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(leaves, handle)


if __name__ == "__main__":
    main()
