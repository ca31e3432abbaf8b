"""A small LLM pipeline runnable as a script, for the kill-and-rerun tests.

`python -m tests.llms.llm_pipeline CACHE_DIR EXECUTOR BASE_URL ROWS OUT_JSON [LLM_JSON]`
runs LoadDataFromDicts -> TextGeneration (2 replicas) with the cache and writes the
rows; LLM_JSON, a JSON object, sets more of the `OpenAILLM`'s fields.
The API key comes from the environment (OPENAI_API_KEY), as in production.
"""

from __future__ import annotations

import json
import sys

from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.llms import OpenAILLM, TextGeneration
from tests.support.results import rows_of


def build(cache_dir: str, executor: str, base_url: str, rows: int, **llm_fields: object) -> Pipeline:
    with Pipeline(name="llm", cache_dir=cache_dir, executor=executor, enable_metadata=True) as pipeline:
        loader = LoadDataFromDicts(data=[{"instruction": f"question {i}"} for i in range(rows)], batch_size=20)
        generate = TextGeneration(
            name="generate",
            llm=OpenAILLM(**{"model": "fake-model", "base_url": base_url, "max_concurrency": 8, **llm_fields}),
            input_batch_size=10,
            resources={"replicas": 2},
        )
        loader >> generate
    return pipeline


def main() -> None:
    cache_dir, executor, base_url, rows, out = sys.argv[1:6]
    llm_fields = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
    result = build(cache_dir, executor, base_url, int(rows), **llm_fields).run(use_cache=True, progress=False)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(rows_of(result), handle)


if __name__ == "__main__":
    main()
