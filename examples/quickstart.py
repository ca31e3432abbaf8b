"""The README quickstart: a real pipeline over a small dataset shipped with the repo.

    uv run python examples/quickstart.py
    uv run python examples/quickstart.py --save quickstart.yaml   # for `stillhouse pipeline run`

It loads 48 sentences, measures them, routes every batch to two of three rewriting
steps at random, groups the rewrites back per row, and finishes with a global step
that ranks the rows. Run it twice: the second run comes straight from the cache.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stillhouse.core import GlobalStep, Pipeline, StepInput, StepOutput, sample_n_steps, step
from stillhouse.core.steps import GroupColumns, LoadDataFromDicts

DATA = Path(__file__).parent / "data" / "sentences.jsonl"


@step(inputs=["text"], outputs=["words"])
def CountWords(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["words"] = len(row["text"].split())
    yield inputs


@step(inputs=["text"], outputs=["rewrite", "style"])
def Shout(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["rewrite"], row["style"] = row["text"].upper(), "shout"
    yield inputs


@step(inputs=["text"], outputs=["rewrite", "style"])
def Backwards(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["rewrite"], row["style"] = " ".join(reversed(row["text"].rstrip(".").split())) + ".", "backwards"
    yield inputs


@step(inputs=["text"], outputs=["rewrite", "style"])
def Whisper(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["rewrite"], row["style"] = row["text"].lower().rstrip(".") + "...", "whisper"
    yield inputs


class RankByLength(GlobalStep):
    """Sees every row at once (a global step): ranks rows by their number of words."""

    @property
    def inputs(self) -> list[str]:
        return ["words"]

    @property
    def outputs(self) -> list[str]:
        return ["rank"]

    def process(self, inputs: StepInput) -> StepOutput:
        order = sorted(range(len(inputs)), key=lambda i: (-inputs[i]["words"], inputs[i]["id"]))
        for rank, index in enumerate(order, start=1):
            inputs[index]["rank"] = rank
        yield inputs


def build() -> Pipeline:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    with Pipeline(name="quickstart", description="Rewrite sentences two ways each.") as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=8)
        count = CountWords(input_batch_size=8)
        rewriters = [Shout(input_batch_size=4), Backwards(input_batch_size=8), Whisper(input_batch_size=8)]
        group = GroupColumns(columns=["rewrite", "style"], output_columns=["rewrites", "styles"])
        rank = RankByLength()
        load >> count >> sample_n_steps(2) >> rewriters >> group >> rank
    return pipeline


if __name__ == "__main__":
    if sys.argv[1:2] == ["--save"]:  # `--save quickstart.yaml`: write the file the CLI runs
        build().save(sys.argv[2])
        print(f"Saved {sys.argv[2]}")
        sys.exit(0)
    distiset = build().run()
    print(distiset)
    for row in distiset["default"]["train"].select(range(3)):
        print(row)
