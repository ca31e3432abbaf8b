"""`DataSampler`: few-shot examples drawn from a list of rows, seeded."""

from __future__ import annotations

import random
from typing import Any, ClassVar

from pydantic import Field

from stillhouse.core import GeneratorStep
from stillhouse.core.typing import GeneratorStepOutput, Row


class DataSampler(GeneratorStep):
    """Yields `samples` rows; each holds `size` rows of `data` drawn at random (with
    replacement), gathered column by column: `{"q": [q1, q2], "a": [a1, a2]}`.

    Unlike distilabel's (which uses the global `random`), the draws are seeded, so a
    rerun, a resumed run and the cache all agree.

    Attributes:
        data: The rows to sample from. A saved pipeline file keeps them beside it, by
            hash, not inside it.
        size: Rows per sample (e.g. few-shot examples per prompt). Defaults to 2.
        samples: How many samples the step yields in total. Defaults to 100.
        seed: Seed of the draws. Defaults to 42.

    Output columns: the columns of `data`'s first row, each holding a list.
    """

    data: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra={"inline_data": True}
    )
    size: int = Field(default=2, ge=1, description="Number of samples per example.")
    samples: int = Field(default=100, ge=0, description="Number of examples generated in total.")
    seed: int = Field(default=42, description="Seed of the random draws.")

    outputs_follow_data: ClassVar[bool] = True  # the columns of `data`'s first row

    @property
    def outputs(self) -> list[str]:
        return list(self.data[0]) if self.data else []

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        if not self.data:
            yield [], True
            return
        rng = random.Random(self.seed)
        samples = (self._sample(rng) for _ in range(self.samples))
        for _ in range(min(offset, self.samples)):  # the same draws as the run that was cut
            next(samples)
        done = min(offset, self.samples)
        if done >= self.samples:
            yield [], True
            return
        while done < self.samples:
            count = min(self.batch_size, self.samples - done)
            batch = [next(samples) for _ in range(count)]
            done += count
            yield batch, done >= self.samples

    def _sample(self, rng: random.Random) -> Row:
        chosen = rng.choices(self.data, k=self.size)
        return {key: [row.get(key) for row in chosen] for key in chosen[0]}
