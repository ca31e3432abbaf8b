"""Make tests/resources/distilabel_distiset with distilabel 1.5.3's own `save_to_disk`.

Run with distilabel 1.5.3 (not a workspace dependency), e.g.
`uv venv /tmp/dlvenv && uv pip install --python /tmp/dlvenv distilabel==1.5.3 pillow`, then
`/tmp/dlvenv/bin/python tests/resources/make_distilabel_distiset.py <out dir>` and copy
`<out dir>` to tests/resources/distilabel_distiset. Two leaves (`counter`, `length`),
one artifact (`counter/counts`), `distiset_configs/` with the card, yaml and log.
"""
import json
import sys
from pathlib import Path

from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, Step, StepInput, step
from distilabel.typing import StepOutput


@step(inputs=["text"], outputs=["upper"])
def Upper(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["upper"] = row["text"].upper()
    yield inputs


@step(inputs=["text"], outputs=["length"])
def Length(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["length"] = len(row["text"])
    yield inputs



class Counter(Step):
    @property
    def inputs(self):
        return ["text"]

    @property
    def outputs(self):
        return ["n"]

    def process(self, inputs: StepInput) -> StepOutput:
        def write(path: Path) -> None:
            (path / "counts.json").write_text(json.dumps({"rows": len(inputs)}))
        self.save_artifact("counts", write, metadata={"rows": len(inputs)})
        for row in inputs:
            row["n"] = 1
        yield inputs


if __name__ == "__main__":
    out = Path(sys.argv[1])
    with Pipeline(name="fixture", cache_dir=str(out.parent / "cache")) as p:
        load = LoadDataFromDicts(data=[{"text": "a"}, {"text": "bb"}, {"text": "ccc"}], batch_size=2)
        upper = Upper(name="upper")
        counter = Counter(name="counter")
        length = Length(name="length")
        load >> upper >> counter
        load >> length
    distiset = p.run(use_cache=False)
    distiset.save_to_disk(out)
    print(distiset)
