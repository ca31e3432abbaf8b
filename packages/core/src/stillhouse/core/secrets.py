"""Secrets in step fields: found at any depth, never written, hashed or echoed.

A field is secret when its type involves `SecretStr` (`SecretStr | None`,
`list[SecretStr]`, ...) or when it is declared with `json_schema_extra={"secret":
True}`. Secrets may sit in nested models (a client model inside a step, a list or
dict of them); every function here walks the live values, so a model held in an
`Any` field is covered too. Pipeline files, signatures and error messages all go
through this module; it knows nothing of files or hashing itself.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import PydanticCustomError

REDACTED = "**********"
"""What a secret looks like wherever it has to be mentioned (pydantic's own mask)."""


def is_secret_field(field: Any) -> bool:
    """Whether a pydantic `FieldInfo` holds a secret."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if extra.get("secret"):
        return True
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in _flatten_args(annotation)


def _flatten_args(annotation: Any) -> set[Any]:
    found: set[Any] = set()
    for arg in get_args(annotation):
        found.add(arg)
        found |= _flatten_args(arg)
    return found


def secret_field_names(model: BaseModel) -> set[str]:
    """The model's own secret fields (top level only; see `secrets_exclude` for depth)."""
    return {name for name, field in type(model).model_fields.items() if is_secret_field(field)}


def secrets_exclude(model: BaseModel) -> dict[str, Any]:
    """A pydantic `exclude=` spec that leaves out every secret of `model`, at any depth."""
    exclude: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        if is_secret_field(field):
            exclude[name] = True
            continue
        nested = _nested_exclude(getattr(model, name, None))
        if nested:
            exclude[name] = nested
    return exclude


def _nested_exclude(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return True  # a secret held in an untyped field (`Any`, `dict`)
    if isinstance(value, BaseModel):
        return secrets_exclude(value)
    if isinstance(value, list | tuple):
        items = {i: _nested_exclude(item) for i, item in enumerate(value)}
    elif isinstance(value, dict):
        items = {key: _nested_exclude(item) for key, item in value.items()}
    else:
        return None
    return {key: spec for key, spec in items.items() if spec} or None


def secret_values(model: BaseModel) -> set[str]:
    """The values of every secret of `model`, at any depth (to mask them in log lines).
    Inline rows (fields marked `inline_data`, 100k rows of a generator) are not walked:
    they are data, and a secret among them is never written (it encodes masked)."""
    found: set[str] = set()
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("inline_data"):
            continue
        value = getattr(model, name, None)
        _collect_secrets(value, found, every_text=is_secret_field(field))
    return found


def _collect_secrets(value: Any, found: set[str], *, every_text: bool) -> None:
    if isinstance(value, SecretStr):
        found.add(value.get_secret_value())
    elif isinstance(value, str):
        if every_text:
            found.add(value)
    elif isinstance(value, BaseModel):
        found |= secret_values(value)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _collect_secrets(item, found, every_text=every_text)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_secrets(item, found, every_text=every_text)


def dump_without_secrets(
    model: BaseModel, exclude: set[str] | frozenset[str] = frozenset(), *, serialize_as_any: bool = False
) -> dict[str, Any]:
    """`model.model_dump(mode="json")` without its secrets (at any depth) and `exclude`;
    `serialize_as_any`: nested models dumped as what they are, not as declared."""
    spec: dict[str, Any] = secrets_exclude(model)
    spec.update(dict.fromkeys(exclude, True))
    return model.model_dump(mode="json", exclude=spec, serialize_as_any=serialize_as_any)


# -- validation errors ------------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    candidates = [annotation, *_flatten_args(annotation)]
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]


def holds_secret(annotation: Any, _seen: frozenset[type] = frozenset()) -> bool:
    """Whether a value of this type may contain a secret (at any depth of nested models)."""
    if annotation is SecretStr or SecretStr in _flatten_args(annotation):
        return True
    for model in _models_in(annotation):
        if model in _seen:
            continue
        for field in model.model_fields.values():
            if is_secret_field(field) or holds_secret(field.annotation, _seen | {model}):
                return True
    return False


def is_secret_location(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> bool:
    """Whether the value at an error location (`("client", "api_key")`, `("clients", 0)`)
    of `model_cls` is a secret or may hold one (a client model with a key inside)."""
    candidates: list[type[BaseModel]] = [model_cls]
    holds = holds_secret(model_cls)
    for part in loc:
        if not isinstance(part, str):
            continue  # a list index or dict key: same models
        fields = [c.model_fields[part] for c in candidates if part in c.model_fields]
        if not fields:
            continue  # a dict key, or a union member's tag
        if any(is_secret_field(field) for field in fields):
            return True
        holds = any(holds_secret(field.annotation) for field in fields)
        candidates = [model for field in fields for model in _models_in(field.annotation)]
    return holds


def _hides_input(model_cls: type[BaseModel] | None, error: Any) -> bool:
    # An unknown field's value may be a misspelt secret (`api_kye=...`): never shown.
    if error["type"] == "extra_forbidden":
        return True
    return model_cls is not None and is_secret_location(model_cls, tuple(error["loc"]))


def redact_validation_error(exc: ValidationError, model_cls: type[BaseModel] | None) -> ValidationError:
    """`exc`, or a copy that shows no input value when any error concerns a secret."""
    errors = exc.errors()
    if not any(_hides_input(model_cls, error) for error in errors):
        return exc
    try:
        return ValidationError.from_exception_data(
            exc.title,
            [{"type": e["type"], "loc": e["loc"], "input": None, **({"ctx": e["ctx"]} if "ctx" in e else {})}
             for e in errors],
            hide_input=True,
        )
    except (TypeError, ValueError, KeyError):  # an error type that cannot be rebuilt as is
        return ValidationError.from_exception_data(
            exc.title,
            [{"type": PydanticCustomError(e["type"], e["msg"]),
              "loc": e["loc"], "input": None} for e in errors],
            hide_input=True,
        )


def describe_validation_error(exc: ValidationError) -> str:
    """`field.path: message; ...` for an error message: locations and reasons, no inputs."""
    return "; ".join(
        f"{'.'.join(map(str, error['loc'])) or 'value'}: {error['msg']}" for error in exc.errors()
    )
