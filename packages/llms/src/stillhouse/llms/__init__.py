"""stillhouse.llms: LLM steps against any OpenAI-compatible server.

```python
from stillhouse.llms import OpenAILLM, TextGeneration, ChatGeneration
from stillhouse.llms.testing import FakeOpenAIServer
```
"""

from stillhouse.llms.errors import LLMAuthenticationError, LLMCallError
from stillhouse.llms.openai_llm import GenerateOutput, OpenAILLM
from stillhouse.llms.tasks import ChatGeneration, Task, TextGeneration

__all__ = [
    "ChatGeneration",
    "GenerateOutput",
    "LLMAuthenticationError",
    "LLMCallError",
    "OpenAILLM",
    "Task",
    "TextGeneration",
]
