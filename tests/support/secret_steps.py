"""Steps holding API keys (at the top level and in nested models), for the secrets tests."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from stillhouse.core import RuntimeParameter, Step, StepInput, StepOutput
from stillhouse.core.runtime import RuntimeParametersMixin

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


class Client(RuntimeParametersMixin, BaseModel):
    """A client model nested in a step, as an LLM client would be."""

    model_config = ConfigDict(extra="forbid")

    api_key: RuntimeParameter[SecretStr] = None
    password: str = Field(default="", json_schema_extra={"secret": True})
    url: str = "http://127.0.0.1"


class CallNested(Step):
    """Secrets one and two levels down: a client, a list of clients, a dict of clients."""

    client: Client
    fallbacks: list[Client] = []
    by_region: dict[str, Client] = {}

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return ["answer"]

    def process(self, inputs: StepInput) -> StepOutput:
        key = self.client.api_key.get_secret_value()  # a SecretStr, however it was set
        for row in inputs:
            row["answer"] = f"{len(key)}:{len(self.client.password)}:{len(self.fallbacks)}"
        yield inputs
