"""A step holding an API key, for the secrets tests."""

from __future__ import annotations

import logging

from pydantic import SecretStr

from stillhouse.core import Step, StepInput, StepOutput

logger = logging.getLogger("stillhouse.test.secret")


class CallApi(Step):
    api_key: SecretStr
    model: str = "tiny"

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["answer"]

    def process(self, inputs: StepInput) -> StepOutput:
        logger.info("calling %s for %d rows", self.model, len(inputs))
        for row in inputs:
            row["answer"] = f"{self.model}:{len(self.api_key.get_secret_value())}"
        yield inputs
