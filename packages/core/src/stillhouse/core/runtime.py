"""Runtime parameters: step fields that may be set when the pipeline runs.

`RuntimeParameter[T]` marks a field; `RuntimeParametersMixin` finds such fields,
says which are required, describes them and sets them from `run(parameters=...)`.
Nothing here knows about pipelines or executors.
"""

from __future__ import annotations

import difflib
import inspect
import re
import typing
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, Field, PrivateAttr

from stillhouse.core.secrets import is_secret_field

_T = TypeVar("_T")
_RUNTIME_PARAMETER_ANNOTATION = "stillhouse_step_runtime_parameter"

RuntimeParameter = Annotated[Union[_T, None], Field(default=None), _RUNTIME_PARAMETER_ANNOTATION]  # noqa: UP007
"""Marks a step field as settable from `run(parameters=...)` and the CLI."""

RuntimeParametersNames = dict[str, "bool | RuntimeParametersNames"]
"""`{name: optional}` for plain parameters, nested dicts for nested models."""


def is_runtime_parameter(field: Any) -> tuple[bool, bool]:
    """Return `(is_runtime_parameter, is_optional)` for a pydantic `FieldInfo`.

    `x: RuntimeParameter[int]` is required unless it has a non-None default;
    `x: Optional[RuntimeParameter[int]] = None` is optional.
    """
    if _RUNTIME_PARAMETER_ANNOTATION in field.metadata:
        return True, field.default is not None
    type_args = get_args(field.annotation)
    for arg in type_args:
        if get_origin(arg) is Annotated and get_args(arg)[-1] == _RUNTIME_PARAMETER_ANNOTATION:
            optional = get_origin(field.annotation) is Union and type(None) in type_args
            return True, optional
    return False, False


def _type_name(annotation: Any) -> str:
    """A readable name for a field's type, without the `| None` RuntimeParameter adds."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Union and len(args) == 1:
        annotation = args[0]
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


# `name: text` or `` - `name`: text ``. [ \t], not \s: a bare \s would let "Attributes:"
# swallow the next line as its text.
_DOC_ENTRY = re.compile(r"^([ \t]*)-?[ \t]*`?(\w+)`?:[ \t]+(.+)$")


def _docstring_descriptions(cls: type) -> dict[str, str]:
    """`name: text` entries of the class docstrings' Attributes / Runtime parameters.

    An entry's text goes on over the lines indented deeper than it, joined with spaces;
    it ends at a blank line, the next entry or a line indented no deeper (a section)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.getdoc(klass) if "__doc__" in vars(klass) else None
        if not doc:
            continue
        lines = doc.expandtabs().splitlines()
        for index, line in enumerate(lines):
            match = _DOC_ENTRY.match(line)
            if match is None:
                continue
            indent, parts = len(match.group(1)), [match.group(3).strip()]
            for following in lines[index + 1:]:
                deeper = len(following) - len(following.lstrip()) > indent
                if not following.strip() or not deeper or _DOC_ENTRY.match(following):
                    break
                parts.append(following.strip())
            found[match.group(2)] = " ".join(parts)
    return found


class RuntimeParametersMixin(BaseModel):
    """Finds, describes and sets the `RuntimeParameter` fields of a model."""

    _runtime_parameters: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def runtime_parameters_names(self) -> RuntimeParametersNames:
        """`{name: optional}`; nested models contribute nested dicts."""
        names: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            is_param, optional = is_runtime_parameter(field)
            if is_param:
                names[name] = optional
                continue
            value = getattr(self, name, None)
            if isinstance(value, RuntimeParametersMixin):
                names[name] = value.runtime_parameters_names
            elif _is_model_list(value):  # distilabel's multi-LLM pattern: {"0": {...}, "1": ...}
                names[name] = {str(i): item.runtime_parameters_names for i, item in enumerate(value)}
        return names

    def get_runtime_parameters_info(self) -> list[dict[str, Any]]:
        """Describe each runtime parameter: name, optional, type, default, description."""
        descriptions = _docstring_descriptions(type(self))
        info: list[dict[str, Any]] = []
        names = self.runtime_parameters_names
        for name, field in type(self).model_fields.items():
            if name not in names:
                continue
            value = getattr(self, name, None)
            if isinstance(value, RuntimeParametersMixin):
                info.append(
                    {"name": name, "runtime_parameters_info": value.get_runtime_parameters_info()}
                )
                continue
            if _is_model_list(value):
                info.append({
                    "name": name,
                    "runtime_parameters_info": {
                        str(i): item.get_runtime_parameters_info() for i, item in enumerate(value)
                    },
                })
                continue
            entry: dict[str, Any] = {
                "name": name,
                "optional": names[name],
                "type": _type_name(field.annotation),
                "default": None if is_secret_field(field) else _plain(field.default),
            }
            description = field.description or descriptions.get(name)
            if description:
                entry["description"] = description
            info.append(entry)
        return info

    def set_runtime_parameters(self, runtime_parameters: dict[str, Any]) -> list[str]:
        """Set parameters from a `{name: value}` dict; return warnings for unknown names."""
        warnings: list[str] = []
        names = self.runtime_parameters_names
        for name, value in runtime_parameters.items():
            if name not in names:
                close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                warnings.append(
                    f"Unknown runtime parameter {name!r} for {self._describe()}; it was ignored."
                    f"{hint} Available: {', '.join(map(repr, names)) or 'none'}."
                )
                continue
            current = getattr(self, name)
            if isinstance(current, RuntimeParametersMixin) and isinstance(value, dict):
                warnings.extend(current.set_runtime_parameters(value))
            elif _is_model_list(current) and isinstance(value, dict):
                warnings.extend(_set_list_parameters(self, name, current, value))
            elif self.model_config.get("validate_assignment"):
                setattr(self, name, value)
            else:  # a nested model without validate_assignment: validate the value anyway
                self.__pydantic_validator__.validate_assignment(self, name, value)
            self._runtime_parameters[name] = value
        return warnings

    def missing_runtime_parameters(self, prefix: str = "") -> list[str]:
        """Dotted names of required runtime parameters whose value is still None."""
        missing: list[str] = []
        for name, optional in self.runtime_parameters_names.items():
            value = getattr(self, name, None)
            if isinstance(optional, dict):
                if isinstance(value, RuntimeParametersMixin):
                    missing.extend(value.missing_runtime_parameters(f"{prefix}{name}."))
                elif _is_model_list(value):
                    for i, item in enumerate(value):
                        missing.extend(item.missing_runtime_parameters(f"{prefix}{name}.{i}."))
            elif not optional and value is None:
                missing.append(f"{prefix}{name}")
        return missing

    def _describe(self) -> str:
        return type(self).__name__


def _is_model_list(value: Any) -> bool:
    """A non-empty list of runtime-parameter models (e.g. several LLMs in one step)."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(item, RuntimeParametersMixin) for item in value
    )


def _set_list_parameters(
    owner: RuntimeParametersMixin, name: str, items: list[Any], values: dict[str, Any]
) -> list[str]:
    """Set `{"0": {...}, "1": {...}}` on the models of list field `name`."""
    warnings: list[str] = []
    for key, item_values in values.items():
        index = int(key) if str(key).isdigit() else -1
        if not 0 <= index < len(items) or not isinstance(item_values, dict):
            warnings.append(
                f"Runtime parameter {name}.{key} of {owner._describe()} names no item of "
                f"{name!r} (items 0 to {len(items) - 1}, each set with a dict); it was ignored."
            )
            continue
        warnings.extend(items[index].set_runtime_parameters(item_values))
    return warnings


def _plain(value: Any) -> Any:
    """A YAML-safe view of a default value."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return repr(value)


def get_type_hints_safe(obj: Any) -> dict[str, Any]:
    """`typing.get_type_hints` that never raises (unresolvable hints are skipped)."""
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception:
        return getattr(obj, "__annotations__", {})
