"""Type aliases shared by steps, the engine and step packages.

This is stillhouse's `distilabel.typing`: every name distilabel 1.5 exports from
`distilabel.typing` is here under the same name and with the same shape, so
`from distilabel.typing import ...` ports by changing the module. It holds type
aliases and `TypedDict`s only; no behaviour belongs here.

- Steps: `StepInput`, `StepOutput`, `GeneratorStepOutput`, `StepColumns`.
- Chat: `ChatType`, `ChatItem`, `TextContent`, `ImageContent`, `ImageUrl`.
- LLM results (for LLM step packages): `GenerateOutput`, `LLMOutput`,
  `LLMStatistics`, `TokenCount`, `Logprob`, `LLMLogprobs`, `HiddenState`,
  `StandardInput`, `StructuredInput`, `FormattedInput`, `StructuredOutputType`,
  `OutlinesStructuredOutputType`, `InstructorStructuredOutputType`.
- Pipelines: `InputDataset`, `LoadGroups`, `PipelineRuntimeParametersInfo`,
  `StepLoadStatus`, `DownstreamConnectable`, `DownstreamConnectableSteps`,
  `UpstreamConnectableSteps`.
"""

from collections.abc import Iterator, Sequence
from typing import (  # pydantic needs these on 3.11
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    NotRequired,
    Required,
    TypeVar,
    Union,
)

from pydantic import BaseModel
from typing_extensions import TypedDict

if TYPE_CHECKING:
    from stillhouse.core.step import GeneratorStep, GlobalStep, Step

# -- steps ---------------------------------------------------------------------------

Row = dict[str, Any]
"""One row of a batch: column name -> value."""
StepInput = Annotated[list[Row], "StepInput"]
"""What a step receives from one predecessor: a list of rows."""
StepOutput = Iterator[list[Row]]
"""What `Step.process` returns: an iterator of lists of rows."""
GeneratorStepOutput = Iterator[tuple[list[Row], bool]]
"""What `GeneratorStep.process` returns: `(rows, is_last_batch)` pairs."""
StepColumns = list[str] | dict[str, bool]
"""A step's inputs or outputs: column names, or `{column: required}`."""

# -- chat ----------------------------------------------------------------------------


class TextContent(TypedDict, total=False):
    """A text part of a chat message's content."""

    type: Required[Literal["text"]]
    text: Required[str]


class ImageUrl(TypedDict):
    """The URL of an image, or the image as a base64 `data:` URL."""

    url: Required[str]


class ImageContent(TypedDict, total=False):
    """An image part of a chat message's content (OpenAI vision format)."""

    type: Required[Literal["image_url"]]
    image_url: Required[ImageUrl]


class ChatItem(TypedDict):
    """One chat message in the OpenAI format."""

    role: Literal["system", "user", "assistant"]
    content: str | list[TextContent | ImageContent]


ChatType = list[ChatItem]
"""A conversation: a list of messages in the OpenAI format."""

# -- LLM results -----------------------------------------------------------------------

LLMOutput = list[str | None]
"""The generations of one input (None where a generation failed)."""


class Logprob(TypedDict):
    token: str
    logprob: float


LLMLogprobs = list[list[list[Logprob]]]
"""Per generation, per position, the candidate tokens and their log probabilities."""


class TokenCount(TypedDict):
    input_tokens: list[int]
    output_tokens: list[int]


LLMStatistics = Union[TokenCount, dict[str, Any]]  # noqa: UP007 (a TypedDict in a union)
"""Token counts, and any other statistics an LLM reports."""


class GenerateOutput(TypedDict):
    """What an LLM's `generate` returns for one input."""

    generations: LLMOutput
    statistics: LLMStatistics
    logprobs: NotRequired[LLMLogprobs]


class OutlinesStructuredOutputType(TypedDict, total=False):
    """Structured-output settings in the `outlines` style."""

    format: Literal["json", "regex"]
    schema: str | type[BaseModel] | dict[str, Any]
    whitespace_pattern: str | list[str] | None


class InstructorStructuredOutputType(TypedDict, total=False):
    """Structured-output settings in the `instructor` style."""

    format: Literal["json"] | None
    schema: type[BaseModel] | dict[str, Any]
    mode: str | None
    max_retries: int


StructuredOutputType = Union[OutlinesStructuredOutputType, InstructorStructuredOutputType]  # noqa: UP007
"""Either structured-output settings style."""
StandardInput = ChatType
"""The usual input of an LLM: a conversation."""
StructuredInput = tuple[StandardInput, StructuredOutputType | None]
"""A conversation with the structured output wanted for it."""
FormattedInput = Union[StandardInput, StructuredInput, str]  # noqa: UP007
"""Anything an LLM step hands to its LLM."""
HiddenState = Any
"""A model's hidden state (a numpy array); `Any` so core needs no numpy."""

# -- pipelines ---------------------------------------------------------------------------

DownstreamConnectable = Union["Step", "GlobalStep"]
"""Step types that can receive rows from another step."""
UpstreamConnectableSteps = TypeVar(
    "UpstreamConnectableSteps", bound=Union["Step", "GlobalStep", "GeneratorStep"]
)
"""Step types that can send rows to another step."""
DownstreamConnectableSteps = TypeVar(
    "DownstreamConnectableSteps", bound=DownstreamConnectable, covariant=True
)
"""Step types that can receive rows from another step (a TypeVar)."""


class StepLoadStatus(TypedDict):
    """Whether a step was loaded, unloaded or failed to load."""

    name: str
    status: Literal["loaded", "unloaded", "load_failed"]


PipelineRuntimeParametersInfo = dict[str, list[dict[str, Any]] | dict[str, Any]]
"""`Pipeline.get_runtime_parameters_info()`: step name -> its parameters' descriptions."""
InputDataset = Any
"""What `run(dataset=...)` accepts: a list of dicts, a `datasets.Dataset` or a pandas DataFrame."""
LoadGroups = Sequence[Sequence[Any]] | Literal["sequential_step_execution"] | None
"""`run(load_groups=...)`: lists of steps (or names) loaded in isolation, or
`"sequential_step_execution"` for one step at a time."""

__all__ = [
    "ChatItem",
    "ChatType",
    "DownstreamConnectable",
    "DownstreamConnectableSteps",
    "FormattedInput",
    "GenerateOutput",
    "GeneratorStepOutput",
    "HiddenState",
    "ImageContent",
    "ImageUrl",
    "InputDataset",
    "InstructorStructuredOutputType",
    "LLMLogprobs",
    "LLMOutput",
    "LLMStatistics",
    "LoadGroups",
    "Logprob",
    "OutlinesStructuredOutputType",
    "PipelineRuntimeParametersInfo",
    "Row",
    "StandardInput",
    "StepColumns",
    "StepInput",
    "StepLoadStatus",
    "StepOutput",
    "StructuredInput",
    "StructuredOutputType",
    "TextContent",
    "TokenCount",
    "UpstreamConnectableSteps",
]
