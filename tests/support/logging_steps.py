"""Steps that log with their own (non-stillhouse) logger; importable by spawned workers."""

from __future__ import annotations

import logging

from stillhouse.core import StepInput, StepOutput, step

logger = logging.getLogger("user_steps")


@step(inputs=["x"], outputs=["y"])
def Chatty(inputs: StepInput) -> StepOutput:
    logger.info("info from a step: %d rows", len(inputs))
    logger.warning("warning from a step: first x=%s", inputs[0]["x"])
    yield [{**row, "y": row["x"]} for row in inputs]


@step(inputs=["x"], outputs=["y"])
def ThreadChatty(inputs: StepInput) -> StepOutput:
    import threading

    worker = threading.Thread(target=logger.warning, args=("from a thread the step started",))
    worker.start()
    worker.join()
    yield [{**row, "y": row["x"]} for row in inputs]
