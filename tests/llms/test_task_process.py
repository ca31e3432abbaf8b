"""A task's `process` called from a script, as distilabel's examples do
(`next(task.process(rows))` after `task.load()`), against FakeOpenAIServer over HTTP.
The engine runs the same `process` as an async step."""

from __future__ import annotations

import asyncio

from stillhouse.llms import ChatGeneration, OpenAILLM, TextGeneration
from stillhouse.llms.testing import FakeOpenAIServer
from tests.llms.conftest import API_KEY


def _llm(server: FakeOpenAIServer) -> OpenAILLM:
    return OpenAILLM(model="fake-model", base_url=server.base_url, api_key=API_KEY)


def test_next_of_process_answers_the_rows_as_in_distilabel(server: FakeOpenAIServer) -> None:
    task = TextGeneration(llm=_llm(server))
    task.load()
    try:
        result = next(task.process([{"instruction": "question 0"}, {"instruction": "question 1"}]))
    finally:
        task.unload()
    assert [row["generation"] for row in result] == ["echo: question 0", "echo: question 1"]
    assert {row["model_name"] for row in result} == {"fake-model"}
    assert task.is_async  # the engine still runs it on the step's loop


def test_process_is_a_plain_iterator_inside_a_running_event_loop(server: FakeOpenAIServer) -> None:
    """A notebook's cell runs in an event loop: `next` runs the batch on a thread of its own."""
    task = ChatGeneration(llm=_llm(server))
    task.load()

    async def cell() -> list[dict]:
        return list(task.process([{"messages": [{"role": "user", "content": "hello"}]}]))

    try:
        [rows] = asyncio.run(cell())
    finally:
        task.unload()
    assert rows[0]["generation"] == "echo: hello"
