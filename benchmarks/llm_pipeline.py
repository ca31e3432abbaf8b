"""The LLM benchmark pipeline, written once for stillhouse and distilabel 1.5.3.

`python -m benchmarks.llm_pipeline ENGINE EXECUTOR BASE_URL ROWS CACHE_DIR OUT_JSON`
runs LoadDataFromDicts(ROWS instructions) -> TextGeneration(OpenAILLM(base_url))
and writes `{"seconds", "rows", "failed"}` to OUT_JSON. Only the imports differ
between engines (`ENGINE` is "stillhouse" or "distilabel"), as in `pipelines.py`.
"""

import json
import sys
import time

MODEL = "fake-model"
API_KEY = "sk-bench-not-a-secret"
BATCH = 50


def build(engine: str, executor: str, base_url: str, rows: int, cache_dir: str):
    data = [{"instruction": f"question {i}"} for i in range(rows)]
    if engine == "distilabel":
        from distilabel.models import OpenAILLM
        from distilabel.pipeline import Pipeline
        from distilabel.steps import LoadDataFromDicts
        from distilabel.steps.tasks import TextGeneration

        pipeline = Pipeline(name="llm-bench", cache_dir=cache_dir)
        llm = OpenAILLM(model=MODEL, base_url=base_url, api_key=API_KEY)
    else:
        from stillhouse.core import Pipeline
        from stillhouse.core.steps import LoadDataFromDicts
        from stillhouse.llms import OpenAILLM, TextGeneration

        pipeline = Pipeline(name="llm-bench", cache_dir=cache_dir, executor=executor, enable_metadata=True)
        llm = OpenAILLM(model=MODEL, base_url=base_url, api_key=API_KEY, max_concurrency=64)
    with pipeline:
        load = LoadDataFromDicts(data=data, batch_size=BATCH)
        generate = TextGeneration(name="generate", llm=llm, input_batch_size=BATCH)
        load >> generate
    return pipeline


def main() -> None:
    engine, executor, base_url, rows, cache_dir, out = sys.argv[1:7]
    pipeline = build(engine, executor, base_url, int(rows), cache_dir)
    started = time.perf_counter()
    if engine == "distilabel":
        distiset = pipeline.run(use_cache=False)
    else:
        distiset = pipeline.run(use_cache=True, progress=False)
    seconds = time.perf_counter() - started
    result = distiset["default"]["train"].to_list()
    failed = [r for r in result if r.get("generation") is None]
    errors = sum(1 for r in failed if (r.get("stillhouse_metadata") or {}).get("error_generate"))
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"seconds": seconds, "rows": len(result), "failed": len(failed),
                   "failed_with_error": errors}, handle)


if __name__ == "__main__":
    main()
