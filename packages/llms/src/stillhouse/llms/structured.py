"""Structured output: a JSON schema or a pydantic model -> the server's
`response_format`, and the per-row check of what comes back.

Accepted forms: a pydantic model class, a JSON schema dict, or distilabel's
`{"schema": <model or JSON schema>, "format": "json"}`. Nothing here sends requests.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel

# jsonschema is imported where a schema is checked: loading the llms plugin stays cheap.


class StructuredOutputError(ValueError):
    """The server's answer is not JSON valid for the requested schema (not retried)."""


def normalize(value: Any) -> tuple[dict[str, Any], type[BaseModel] | None]:
    """`(JSON schema, pydantic model or None)` for any accepted form of `structured_output`."""
    if isinstance(value, dict) and "schema" in value and "format" in value:
        value = value["schema"]
    if isinstance(value, type) and issubclass(value, BaseModel):
        return value.model_json_schema(), value
    if isinstance(value, dict):
        import jsonschema

        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"structured_output is not a valid JSON schema: {exc.message}") from exc
        return value, None
    raise ValueError(
        f"structured_output must be a pydantic model class or a JSON schema dict, got {value!r}."
    )


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI `response_format` asking for JSON valid for `schema`."""
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(schema.get("title") or "output"))[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def parse(text: str | None, schema: dict[str, Any], model: type[BaseModel] | None) -> str:
    """Check `text` against the schema; return it as canonical JSON (distilabel returns
    the generation as a JSON string). Raises `StructuredOutputError`."""
    if text is None:
        raise StructuredOutputError("The server returned no content for a structured-output request.")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StructuredOutputError(f"The answer is not JSON ({exc}): {text[:200]!r}") from exc
    if model is not None:
        try:
            return model.model_validate(data).model_dump_json()
        except ValueError as exc:
            raise StructuredOutputError(f"The answer does not fit {model.__name__}: {exc}") from exc
    import jsonschema

    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        raise StructuredOutputError(f"The answer does not fit the schema: {exc.message}") from exc
    return json.dumps(data, ensure_ascii=False)
