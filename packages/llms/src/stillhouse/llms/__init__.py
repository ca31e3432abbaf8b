"""stillhouse.llms: LLM steps against any OpenAI-compatible server.

```python
from stillhouse.llms import OpenAILLM, TextGeneration, ChatGeneration
from stillhouse.llms.testing import FakeOpenAIServer
```

The names are imported on first use, not with the package: the plugin entry point
(`stillhouse.llms.plugin`) imports this package on every run, which needs none of
them unless it has an LLM step.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stillhouse.llms.errors import LLMAuthenticationError, LLMCallError
    from stillhouse.llms.openai_llm import GenerateOutput, OpenAILLM
    from stillhouse.llms.tasks import ChatGeneration, Task, TextGeneration

_MODULES = {
    "ChatGeneration": "stillhouse.llms.tasks",
    "GenerateOutput": "stillhouse.llms.openai_llm",
    "LLMAuthenticationError": "stillhouse.llms.errors",
    "LLMCallError": "stillhouse.llms.errors",
    "OpenAILLM": "stillhouse.llms.openai_llm",
    "Task": "stillhouse.llms.tasks",
    "TextGeneration": "stillhouse.llms.tasks",
}

__all__ = [
    "ChatGeneration",
    "GenerateOutput",
    "LLMAuthenticationError",
    "LLMCallError",
    "OpenAILLM",
    "Task",
    "TextGeneration",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
