"""Pipelines to and from plain dicts (YAML, JSON).

The file carries a format version. Steps are resolved by registered name (plugins)
first, then by import path. YAML is always loaded with `yaml.safe_load`. Secret
fields (`SecretStr`, or `json_schema_extra={"secret": True}`) are never written.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import yaml
from pydantic import SecretStr

from stillhouse.core import _references
from stillhouse.core.errors import SerializationError

if TYPE_CHECKING:
    from stillhouse.core.pipeline import Pipeline
    from stillhouse.core.step import _Step

FORMAT_VERSION = 1
_STEP_FIELDS_NOT_DUMPED = {"pipeline"}


def is_secret_field(field: Any) -> bool:
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


def secret_field_names(step: _Step) -> set[str]:
    return {name for name, field in type(step).model_fields.items() if is_secret_field(field)}


def step_to_dict(step: _Step) -> dict[str, Any]:
    exclude = _STEP_FIELDS_NOT_DUMPED | secret_field_names(step)
    data = step.model_dump(mode="json", exclude=exclude)
    cls = type(step)
    data["type_info"] = {"module": _references.class_module(cls), "name": cls.__qualname__}
    if _references.script_file(cls):  # defined in the script being run (`__main__`)
        data["type_info"]["file"] = _references.script_file(cls)
    _references.warn_if_unreferenceable(cls, str(step.name))
    data["runtime_parameters_info"] = step.get_runtime_parameters_info()
    return data


def pipeline_to_dict(pipeline: Pipeline) -> dict[str, Any]:
    from stillhouse.core import __version__

    dag = pipeline.dag
    return {
        "stillhouse": {"format_version": FORMAT_VERSION, "version": __version__},
        "pipeline": {
            "name": pipeline.name,
            "description": pipeline.description,
            "enable_metadata": pipeline.enable_metadata,
            "requirements": list(pipeline.requirements),
            "executor": pipeline.executor,
            "steps": [
                {"name": name, "step": step_to_dict(dag.get_step(name))}
                for name in dag.step_names
            ],
            "connections": [{"from": name, "to": dag.successors(name)} for name in dag.step_names],
            "routing_batch_functions": [
                {"step": source, **routing.dump()} for source, routing in dag.routing.items()
            ],
        },
    }


def dumps(data: dict[str, Any], format: str) -> str:
    if format == "yaml":
        # The C dumper when libyaml is there: a generator's inline data can be 100k rows.
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        return yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True)
    if format == "json":
        return json.dumps(data, indent=2, ensure_ascii=False)
    raise SerializationError(f"Unknown format {format!r}. Use 'yaml' or 'json'.")


def read_text(path: str | Path) -> str:
    """Read a local file or an fsspec URL."""
    text_path = str(path)
    if "://" in text_path and not text_path.startswith("file://"):
        try:
            import fsspec
        except ImportError as exc:
            raise SerializationError(
                f"Reading {text_path!r} needs fsspec. Install stillhouse-cache or fsspec."
            ) from exc
        with fsspec.open(text_path, "r", encoding="utf-8") as handle:
            return handle.read()
    return Path(text_path.removeprefix("file://")).read_text(encoding="utf-8")


def loads(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SerializationError(f"{source} is not valid YAML/JSON: {_yaml_problem(exc)}") from exc
    check_format(data, source)
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line with the line and column: `str(exc)` spreads them over several lines."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}" + (f" ({context})" if context else "")


_TOP_KEYS = {"stillhouse", "pipeline"}
_PIPELINE_KEYS = {"name", "description", "enable_metadata", "requirements", "executor", "steps",
                  "connections", "routing_batch_functions"}


def _check_keys(found: dict[str, Any], known: set[str], where: str, source: str) -> None:
    """A misspelt key is an error naming it and the closest known one, not a silent default."""
    import difflib

    for key in found:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SerializationError(
                f"{source}: unknown key {key!r} in {where}.{hint} Known keys: "
                f"{', '.join(sorted(known))}."
            )


def _connected_step(steps: dict[str, Any], name: Any, source: str) -> Any:
    try:
        return steps[name]
    except (KeyError, TypeError):
        raise SerializationError(
            f"{source}: a connection names step {name!r}, which is not among the pipeline's "
            f"steps {sorted(steps)!r}. Fix the name in 'connections' or add the step."
        ) from None


def check_format(data: Any, source: str) -> None:
    """Raise unless `data` is a pipeline dict this version of stillhouse can read."""
    if isinstance(data, dict) and "pipeline" not in data and any(
        key not in _TOP_KEYS and str(key).lower().startswith("pip") for key in data
    ):
        _check_keys(data, _TOP_KEYS, "the top level", source)  # "pipline:": name the typo
    if not isinstance(data, dict) or "pipeline" not in data:
        raise SerializationError(
            f"{source} is not a stillhouse pipeline file (no top-level 'pipeline' key)."
        )
    _check_keys(data, _TOP_KEYS, "the top level", source)
    if not isinstance(data["pipeline"], dict):
        raise SerializationError(f"{source}: 'pipeline' must be a mapping, not {data['pipeline']!r}.")
    _check_keys(data["pipeline"], _PIPELINE_KEYS, "'pipeline'", source)
    version = (data.get("stillhouse") or {}).get("format_version", FORMAT_VERSION)
    if not isinstance(version, int):
        raise SerializationError(f"{source} has an invalid format version {version!r}.")
    if version > FORMAT_VERSION:
        raise SerializationError(
            f"{source} has format version {version}, newer than this stillhouse supports "
            f"({FORMAT_VERSION}). Upgrade stillhouse."
        )


def resolve_step_class(type_info: dict[str, Any], step_name: str) -> type:
    from stillhouse.core.plugins import registry

    module, name = type_info.get("module"), type_info.get("name")
    registered = registry().steps
    if name in registered and (module is None or registered[name].__module__ == module):
        return registered[name]
    if module is None and name in registered:
        return registered[name]
    _references.make_importable(type_info)  # a user's script named by its file
    try:
        target: Any = importlib.import_module(module)
        for part in str(name).split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        known = ", ".join(sorted(registered)) or "none"
        script = f" from {type_info['file']}" if type_info.get("file") else ""
        raise SerializationError(
            f"Step {step_name!r}: cannot resolve class {module}.{name}{script} ({exc}). Install the "
            f"package that provides it, or register it with `register_steps`. "
            f"Registered steps: {known}."
        ) from exc
    return target


def pipeline_from_dict(data: dict[str, Any]) -> Pipeline:
    from stillhouse.core.pipeline import Pipeline
    from stillhouse.core.routing import RoutingBatchFunction

    check_format(data, "The pipeline dict")  # from_dict callers skip loads()
    spec = data["pipeline"]
    pipeline = Pipeline(
        name=spec.get("name"),
        description=spec.get("description"),
        enable_metadata=spec.get("enable_metadata", False),
        requirements=spec.get("requirements") or None,
        executor=spec.get("executor", "mp"),
    )
    steps: dict[str, Any] = {}
    with pipeline:
        for entry in spec.get("steps", []):
            fields = dict(entry["step"])
            type_info = fields.pop("type_info", {})
            fields.pop("runtime_parameters_info", None)
            cls = resolve_step_class(type_info, entry["name"])
            try:
                steps[entry["name"]] = cls(**fields)
            except Exception as exc:
                raise SerializationError(
                    f"Step {entry['name']!r} ({type_info.get('name')}) cannot be rebuilt from "
                    f"its fields: {exc}"
                ) from exc
    routing = {r["step"]: r for r in spec.get("routing_batch_functions", [])}
    for connection in spec.get("connections", []):
        source, targets = connection.get("from"), connection.get("to") or []
        origin = "The pipeline file"
        first = _connected_step(steps, source, origin)
        if not targets:
            continue
        successors = [_connected_step(steps, t, origin) for t in targets]
        if source in routing:
            function = RoutingBatchFunction.from_dump(routing[source])
            first >> function >> successors
        else:
            first.connect(*successors)
    return pipeline
