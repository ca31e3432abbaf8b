"""Which fields a step's signature covers: `exclude_from_signature`, the step's own and that of
every model held in its fields, at any depth; both in `Step.signature` and in the cache's."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from stillhouse.cache import step_signatures
from stillhouse.core import Pipeline, Step, StepInput, StepOutput
from stillhouse.core.signatures import result_affecting
from stillhouse.core.steps import LoadDataFromDicts


class Client(BaseModel):
    """A remote client: `url` changes the answers, `timeout` only how they arrive."""

    exclude_from_signature: ClassVar[set[str]] = {"timeout"}
    url: str = "http://a"
    timeout: float = 10.0


class Ask(Step):
    client: Client = Client()
    backups: list[Client] = []
    polite: bool = True

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


class QuietAsk(Ask):
    exclude_from_signature: ClassVar[set[str]] = Step.exclude_from_signature | {"polite"}


def _signatures(step_class: type[Ask] = Ask, **fields: object) -> tuple[str, str]:
    with Pipeline(name="fields") as pipeline:
        ask = step_class(name="ask", **fields)
        LoadDataFromDicts(data=[{"a": 1}]) >> ask
    return ask.signature, step_signatures(pipeline.dag)["ask"]


def test_a_nested_models_own_exclusions_leave_both_signatures_alone() -> None:
    base = _signatures()
    assert _signatures(client=Client(timeout=99.0)) == base
    assert _signatures(backups=[Client(timeout=1.0)]) == _signatures(backups=[Client(timeout=2.0)])


def test_a_nested_result_affecting_field_changes_both_signatures() -> None:
    base = _signatures()
    changed = _signatures(client=Client(url="http://b"))
    assert changed[0] != base[0] and changed[1] != base[1]
    one, other = _signatures(backups=[Client(url="http://a")]), _signatures(backups=[Client(url="http://b")])
    assert one[0] != other[0] and one[1] != other[1]


def test_a_subclass_that_excludes_more_is_honoured_by_the_cache_too() -> None:
    assert _signatures(QuietAsk, polite=False) == _signatures(QuietAsk, polite=True)
    assert _signatures(Ask, polite=False)[1] != _signatures(Ask, polite=True)[1]


def test_result_affecting_drops_keys_at_any_depth_and_keeps_the_rest() -> None:
    model = Ask(name="x", client=Client(url="u", timeout=3.0), backups=[Client(timeout=4.0)])
    dumped = result_affecting(model.model_dump(mode="json", exclude={"pipeline"}), model)
    assert dumped["client"] == {"url": "u"}
    assert dumped["backups"] == [{"url": "http://a"}]
    assert "batch_timeout" not in dumped and "input_batch_size" not in dumped
    assert dumped["polite"] is True
