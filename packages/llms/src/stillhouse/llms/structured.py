"""Structured output: a JSON schema or a pydantic model -> the server's
`response_format`, and the per-row check of what comes back.

Accepted forms: a pydantic model class, a JSON schema dict, or distilabel's
`InstructorStructuredOutputType`, `{"schema": <model or JSON schema>}` with an optional
`"format": "json"` and an optional instructor `"mode"`. Anything else is refused when
the LLM is made (`normalize` raises), never per request. Nothing here sends requests.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel

# jsonschema is imported where a schema is checked: loading the llms plugin stays cheap.


class StructuredOutputError(ValueError):
    """The server's answer is not JSON valid for the requested schema (not retried)."""


WRAPPER_KEYS = ("schema", "format", "mode")
"""The keys of distilabel's `{"schema": ..., "format": "json", "mode": ...}` we accept."""

INSTRUCTOR_MODES = (
    "tool_call", "tools_strict", "function_call", "json_mode", "json_o1", "json_schema_mode",
    "markdown_json_mode",
)
"""instructor's modes for OpenAI-compatible clients that ask for one object of the schema.
stillhouse asks every one of them the same way, with `response_format` (`json_schema`):
each answer is one JSON object valid for the schema, as instructor returns in these modes."""


def normalize(value: Any) -> tuple[dict[str, Any], type[BaseModel] | None]:
    """`(JSON schema, pydantic model or None)` for any accepted form of `structured_output`.

    Raises `ValueError` naming the bad part and the fix for anything else."""
    if isinstance(value, dict) and "schema" in value:  # no JSON schema keyword is `schema`
        value = _unwrap(value)
    if isinstance(value, type) and issubclass(value, BaseModel):
        return value.model_json_schema(), value
    if isinstance(value, dict):
        import jsonschema

        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"structured_output is not a JSON schema: {exc}. Give a pydantic model class "
                "itself, or a JSON schema made of JSON values only (e.g. `Model.model_json_schema()`)."
            ) from None
        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"structured_output is not a valid JSON schema: {exc.message}") from exc
        return value, None
    raise ValueError(
        f"structured_output must be a pydantic model class, a JSON schema dict or "
        f"{{'schema': <either>, 'format': 'json'}}, got {value!r}."
    )


def _unwrap(value: dict[str, Any]) -> Any:
    """The schema of distilabel's `{"schema": ..., "format": "json", "mode": ...}`, after
    checking its other keys."""
    if "max_retries" in value:
        raise ValueError(
            f"structured_output['max_retries'] = {value['max_retries']!r} (instructor's re-asks) is "
            "not supported: an answer that does not fit the schema fails its row, and "
            "`run(retry_failed=True)` asks again. Remove 'max_retries' from structured_output."
        )
    unknown = sorted(set(value) - set(WRAPPER_KEYS), key=str)
    if unknown:
        raise ValueError(
            f"structured_output has unknown key(s) {', '.join(map(repr, unknown))}. Known: "
            f"{', '.join(map(repr, WRAPPER_KEYS))}. Give {{'schema': <pydantic model or JSON schema>}}, "
            "optionally with 'format': 'json' and an instructor 'mode'."
        )
    if value.get("format") not in (None, "json"):
        raise ValueError(
            f"structured_output['format'] = {value['format']!r} is not supported: OpenAILLM asks "
            "for JSON valid for a schema ('format': 'json', the default). Use 'json' with a "
            "pydantic model or JSON schema, or leave 'format' out."
        )
    mode = value.get("mode")
    mode = getattr(mode, "value", mode)  # an `instructor.Mode` member, or its value
    if mode is not None and mode not in INSTRUCTOR_MODES:
        raise ValueError(
            f"structured_output['mode'] = {mode!r} is not supported: OpenAILLM asks every "
            "OpenAI-compatible server with `response_format` (json_schema) for one object of "
            f"the schema. Accepted modes (all asked that way): {', '.join(map(repr, INSTRUCTOR_MODES))}; "
            "or leave 'mode' out."
        )
    return value["schema"]


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
