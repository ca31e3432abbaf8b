"""distilabel's `_Serializable` for a step or an LLM: `dump`, `save` and the loaders.

`dump()` is the model's fields as plain data (secrets left out, at any depth) with a
`type_info` naming its class; `save(path)` writes it as JSON or YAML. Loading is
`from_dict` / `from_json` / `from_yaml` / `from_file` on the class to build: the class
is the caller's, never one a file names (a file only ever gives field values), and
YAML is read with the safe loader, so loading runs nothing but that class's validation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel

from stillhouse.core import _references
from stillhouse.core.secrets import dump_without_secrets

_NOT_FIELDS = ("type_info", "runtime_parameters_info")
_FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


class Serializable:
    """Mixed into a pydantic model (a step, an LLM)."""

    def dump(self) -> dict[str, Any]:
        """The model as plain data: its fields without secrets, and `type_info`."""
        assert isinstance(self, BaseModel)
        cls = type(self)
        data = dump_without_secrets(self)
        data["type_info"] = {"module": _references.class_module(cls), "name": cls.__qualname__}
        return data

    def save(self, path: str | os.PathLike[str], format: str = "json") -> None:
        """Write `dump()` to `path` as `format` ("json", as in distilabel, or "yaml")."""
        data = self.dump()
        if format == "json":
            text = json.dumps(data, indent=2, ensure_ascii=False)
        elif format == "yaml":
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        else:
            raise ValueError(f"Cannot save {type(self).__name__} as {format!r}: use format='json' or 'yaml'.")
        Path(path).write_text(text, encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build this class from `dump()`'s dict (`type_info` is read, never obeyed)."""
        return cls(**{key: value for key, value in data.items() if key not in _NOT_FIELDS})

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Self:
        return cls.from_dict(_read(path, "json"))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Self:
        return cls.from_dict(_read(path, "yaml"))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Self:
        """`from_json` or `from_yaml`, by the file's suffix."""
        format = _FORMATS.get(Path(path).suffix.lower())
        if format is None:
            raise ValueError(
                f"Cannot tell the format of {os.fspath(path)!r} from its suffix: name it .json, .yaml or .yml."
            )
        return cls.from_dict(_read(path, format))


def _read(path: str | os.PathLike[str], format: str) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text) if format == "json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{os.fspath(path)} is not valid {format.upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)} holds {type(data).__name__}, not the mapping `dump()` writes.")
    return data
