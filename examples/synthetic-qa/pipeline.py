"""Synthetic QA: generate questions, answer them, judge the answers, keep the good ones.

    uv run python examples/synthetic-qa/pipeline.py                 # against FakeOpenAIServer
    OPENAI_BASE_URL=http://localhost:8000/v1 OPENAI_API_KEY=... QA_MODEL=meta-llama/Llama-3.1-8B-Instruct \\
        uv run python examples/synthetic-qa/pipeline.py             # against any OpenAI-compatible server

Environment: OPENAI_BASE_URL (unset: a FakeOpenAIServer on 127.0.0.1 is started),
OPENAI_API_KEY, QA_MODEL (default "fake-model"), QA_JUDGE_MODEL (default QA_MODEL),
QA_TOPICS (how many topics, default 12), QA_MIN_SCORE (default 4), QA_EXECUTOR
(default "threaded"), QA_OUT (a folder to save the dataset to).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from pydantic import BaseModel, Field

from stillhouse.core import Pipeline, StepInput, StepOutput, step
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.llms import OpenAILLM, TextGeneration
from stillhouse.llms.testing import FakeOpenAIServer

TOPICS = ["photosynthesis", "prime numbers", "the French revolution", "plate tectonics", "recursion",
          "the water cycle", "supply and demand", "vaccines", "black holes", "sorting algorithms",
          "the Roman republic", "entropy"]


class Judgement(BaseModel):
    """What the judge answers for one question/answer pair."""

    score: int = Field(ge=1, le=5, description="1 (wrong or useless) to 5 (correct and complete)")
    reason: str


@step(inputs=["judgement"], outputs=["score"])
def KeepGoodAnswers(inputs: StepInput, min_score: int = 4) -> StepOutput:
    """Keep the rows whose judgement scores at least `min_score` (failed rows are dropped)."""
    kept = []
    for row in inputs:
        if row["judgement"] is None:
            continue
        row["score"] = Judgement.model_validate_json(row["judgement"]).score
        if row["score"] >= min_score:
            kept.append(row)
    yield kept


def build(base_url: str, topics: int, min_score: int, executor: str) -> Pipeline:
    model = os.environ.get("QA_MODEL", "fake-model")
    judge_model = os.environ.get("QA_JUDGE_MODEL", model)
    with Pipeline(name="synthetic-qa", executor=executor) as pipeline:
        load = LoadDataFromDicts(data=[{"topic": TOPICS[i % len(TOPICS)], "n": i} for i in range(topics)])
        ask = TextGeneration(
            name="ask",
            llm=OpenAILLM(model=model, base_url=base_url, generation_kwargs={"temperature": 0.9}),
            system_prompt="You write short exam questions.",
            template="Write one question about {{ topic }} (variant {{ n }}).",
            columns=["topic", "n"],
            output_mappings={"generation": "question"},
        )
        answer = TextGeneration(
            name="answer",
            llm=OpenAILLM(model=model, base_url=base_url, generation_kwargs={"temperature": 0.2}),
            template="Answer concisely: {{ question }}",
            columns=["question"],
            output_mappings={"generation": "answer", "model_name": "answer_model"},
        )
        judge = TextGeneration(
            name="judge",
            llm=OpenAILLM(model=judge_model, base_url=base_url, structured_output=Judgement,
                          generation_kwargs={"temperature": 0.0}),
            template=("Rate the answer from 1 to 5 and say why.\n"
                      "Question: {{ question }}\nAnswer: {{ answer }}"),
            columns=["question", "answer"],
            output_mappings={"generation": "judgement", "model_name": "judge_model"},
        )
        keep = KeepGoodAnswers(min_score=min_score)
        load >> ask >> answer >> judge >> keep
    return pipeline


@contextlib.contextmanager
def endpoint() -> Iterator[str]:
    """The endpoint from OPENAI_BASE_URL, or a FakeOpenAIServer for the length of the run."""
    if os.environ.get("OPENAI_BASE_URL"):
        yield os.environ["OPENAI_BASE_URL"]
        return
    os.environ.setdefault("OPENAI_API_KEY", "sk-fake")
    with FakeOpenAIServer(latency=0.02) as server:
        yield server.base_url


def main() -> None:
    with endpoint() as base_url:
        pipeline = build(
            base_url,
            topics=int(os.environ.get("QA_TOPICS", "12")),
            min_score=int(os.environ.get("QA_MIN_SCORE", "4")),
            executor=os.environ.get("QA_EXECUTOR", "threaded"),
        )
        distiset = pipeline.run()
    rows = distiset["default"]["train"].to_list()
    for row in rows[:3]:
        print(json.dumps({k: row[k] for k in ("question", "answer", "score")}, ensure_ascii=False))
    print(f"kept {len(rows)} good question/answer pairs")
    if os.environ.get("QA_OUT"):
        distiset.save_to_disk(os.environ["QA_OUT"])


if __name__ == "__main__":
    main()
