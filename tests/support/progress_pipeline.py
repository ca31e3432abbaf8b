"""A small pipeline a test runs as a script in a pseudo-terminal: `python -m
tests.support.progress_pipeline CACHE_DIR [SLEEP]` (the live view is only drawn on a terminal)."""

from __future__ import annotations

import sys

from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.steps import Slow


def build(cache_dir: str, sleep: float) -> Pipeline:
    with Pipeline(name="ptydemo", cache_dir=cache_dir, executor="threaded") as pipeline:
        load = LoadDataFromDicts(name="generate", data=[{"x": i} for i in range(40)], batch_size=4)
        load >> Slow(name="slow", sleep=sleep, input_batch_size=2)
    return pipeline


if __name__ == "__main__":
    build(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.02).run()
    print("RUN FINISHED")
