"""Pipelines to and from plain dicts (YAML, JSON).

The file carries a format version. Steps are resolved by registered name (plugins)
first, then by import path. YAML is always loaded with `yaml.safe_load`. Secret
fields (`SecretStr`, or `json_schema_extra={"secret": True}`) are never written, at
any depth (see `stillhouse.core.secrets`).
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stillhouse.core import _references, inline_data
from stillhouse.core.errors import SerializationError
from stillhouse.core.secrets import (  # noqa: F401  (is_secret_field, secret_field_names: public here too)
    dump_without_secrets,
    is_secret_field,
    secret_field_names,
)

if TYPE_CHECKING:
    from stillhouse.core.pipeline import Pipeline
    from stillhouse.core.step import _Step

FORMAT_VERSION = 1
_STEP_FIELDS_NOT_DUMPED = {"pipeline"}


def step_to_dict(step: _Step, inline_dir: str | Path | None = None) -> dict[str, Any]:
    """The step as plain data, secrets left out at any depth. With `inline_dir`, inline-data
    fields are written there as files and replaced by references (`stillhouse.core.inline_data`)."""
    references = inline_data.write_references(step, inline_dir) if inline_dir is not None else {}
    data = dump_without_secrets(step, exclude=_STEP_FIELDS_NOT_DUMPED | set(references))
    data.update(references)
    cls = type(step)
    data["type_info"] = {"module": _references.class_module(cls), "name": cls.__qualname__}
    if _references.script_file(cls):  # defined in the script being run (`__main__`)
        data["type_info"]["file"] = _references.script_file(cls)
    _references.warn_if_unreferenceable(cls, f"Step {str(step.name)!r}")
    data["runtime_parameters_info"] = step.get_runtime_parameters_info()
    return data


def pipeline_to_dict(pipeline: Pipeline, inline_dir: str | Path | None = None) -> dict[str, Any]:
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
                {"name": name, "step": step_to_dict(dag.get_step(name), inline_dir)}
                for name in dag.step_names
            ],
            "connections": [{"from": name, "to": dag.successors(name)} for name in dag.step_names],
            "routing_batch_functions": [
                routing_to_dict(source, routing) for source, routing in dag.routing.items()
            ],
        },
    }


def routing_to_dict(source: str, routing: Any) -> dict[str, Any]:
    """The routing function after step `source`, as `step_to_dict` writes a step: one the
    user's script defines carries the script's path (`type_info.file`) beside its module
    name. The path is not in `routing.dump()`, which signatures read: a run from the
    script and one from the CLI (where the script is an imported module) sign it alike."""
    data = {"step": source, **routing.dump()}
    function = routing.user_function
    if function is not None:
        if _references.script_file(function):  # defined in the script being run (`__main__`)
            data["type_info"]["file"] = _references.script_file(function)
        _references.warn_if_unreferenceable(function, f"The routing function after step {source!r}")
    return data


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
    return inline_data.read_bytes(str(path)).decode("utf-8")


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


_TOP_KEYS = {"stillhouse", "pipeline", "requirements"}  # requirements: distilabel repeats them on top
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


def _refused_by_name(module: Any, name: Any) -> str | None:
    """Why `module.name` may not be imported at all, or None: checked before any import.

    Step classes and routing functions never live in the standard library (`os`,
    `subprocess`, `builtins`, ...), and a dotted name never needs a private or dunder
    part (`__globals__`, `__subclasses__`) to reach one.
    """
    if not isinstance(module, str) or not isinstance(name, str) or not module or not name:
        return "the module and the name must both be given as text"
    if not all(part.isidentifier() for part in module.split(".")):
        return f"{module!r} is not a module name"
    parts = name.split(".")
    if not all(part.isidentifier() and not part.startswith("__") for part in parts):
        return f"{name!r} is not a plain (non-dunder) attribute path"
    top = module.split(".")[0]
    if top != "__main__" and (top in sys.stdlib_module_names or top in sys.builtin_module_names):
        return f"{module!r} is a standard-library module, which holds no stillhouse step or routing function"
    return None


def _module_source(module: str) -> Path | None:
    """The source file `import module` would run, found without importing anything (not
    even its parent packages); None when it is not plain Python source on `sys.path`."""
    search: list[str] | None = None
    spec = None
    for depth, part in enumerate(module.split(".")):
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            return None
        if depth < module.count("."):
            if spec.submodule_search_locations is None:
                return None
            search = list(spec.submodule_search_locations)
    origin = getattr(spec, "origin", None)
    return Path(origin) if origin and origin.endswith(".py") else None


def _top_level_bindings(tree: ast.Module) -> dict[str, list[ast.stmt]]:
    """The statements that bind each name at a module's top level (also inside top-level
    `if`/`try`/`with` blocks); `from x import *` binds "*" (any name)."""
    bound: dict[str, list[ast.stmt]] = {}
    body = list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            bound.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                bound.setdefault((alias.asname or alias.name).split(".")[0], []).append(node)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for found in ast.walk(target):
                    if isinstance(found, ast.Name):
                        bound.setdefault(found.id, []).append(node)
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            body.extend(node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", []))
            body.extend(stmt for handler in getattr(node, "handlers", []) for stmt in handler.body)
    return bound


def _defines(node: ast.stmt) -> bool:
    """Whether `node` could define a step class or a routing function: a class, a decorated
    function (`@step`, `@routing_batch_function`), or a name bound to a call's result
    (`route = sample_n_steps(2)`). An import or a constant cannot."""
    if isinstance(node, ast.ClassDef):
        return True
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return bool(node.decorator_list)
    return isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call)


def _unbound_reason(module: str, name: str, file: Path | None = None, *, defined: bool = False) -> str | None:
    """Why importing `module` (from `file`, or as `import` would find it) to get `name`
    is refused, or None: its source, read without running it, must bind `name`'s first
    part at its top level (with `defined`, by a statement that could define a step class
    or routing function: `_defines`). So a pipeline file cannot make stillhouse import
    (and run the top level of) a module that does not even define what it names. A module
    already imported, or one without plain source, cannot be checked (None)."""
    if module in sys.modules:
        return None
    source = file if file is not None else _module_source(module)
    if source is None or not source.is_file():
        return None
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (SyntaxError, ValueError, OSError) as exc:
        return f"its source {source} cannot be read as Python ({exc})"
    bound = _top_level_bindings(tree)
    first = name.split(".")[0]
    statements = bound.get(first, [])
    if not defined and (statements or "*" in bound):
        return None
    if defined and any(_defines(node) for node in statements):
        return None
    reason = f"{source} does not define {first!r} at its top level"
    if statements:  # bound, but by an import or a constant: not a step's definition
        reason += " as a class, a decorated function or a call's result"
    return reason


def import_object(module: Any, name: Any, what: str) -> Any:
    """`module.name`, imported and looked up without calling anything.

    The caller must check what it got (a step class, a routing function) before it calls
    it. Names that cannot be a stillhouse object are refused before the import, and so
    is a module whose source does not define the name (`_unbound_reason`).
    """
    reason = _refused_by_name(module, name) or _unbound_reason(module, name)
    if reason is not None:
        raise SerializationError(
            f"{what} names {module}.{name}, which was refused without importing it: {reason}. "
            "A pipeline file may only name stillhouse step classes and routing functions; "
            "check where the file came from."
        )
    try:
        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise SerializationError(f"{what}: cannot resolve {module}.{name} ({exc}).") from exc
    return target


def import_script(type_info: dict[str, Any], what: str) -> None:
    """Make the user's script that `type_info` names (`file`) importable, so `import_object`
    finds the step class or routing function it defines. The script must define the name
    at its top level (`_defines`), checked by reading it before its folder goes on `sys.path`."""
    module, name, file = type_info.get("module"), type_info.get("name"), type_info.get("file")
    if _refused_by_name(module, name) is not None or not isinstance(file, str):
        return  # import_object refuses the name, or there is no script
    reason = _unbound_reason(module, name, Path(file).resolve(), defined=True)
    if reason is not None:
        raise SerializationError(
            f"{what} names {module}.{name} in the script {file}, which was refused without "
            f"importing it: {reason}. A pipeline file may only name stillhouse step classes "
            "and routing functions; check where the file came from."
        )
    _references.make_importable(type_info)


def resolve_step_class(type_info: dict[str, Any], step_name: str) -> type:
    """The step class a pipeline file names: a registered step, or a step class by import
    path. Anything that is not a subclass of the step base is refused before it is called."""
    from stillhouse.core.plugins import registry
    from stillhouse.core.step import _Step

    if not isinstance(type_info, dict):
        type_info = {}
    module, name = type_info.get("module"), type_info.get("name")
    registered = registry().steps
    if isinstance(name, str) and name in registered and module in (None, registered[name].__module__):
        return registered[name]
    known = ", ".join(sorted(registered)) or "none"
    import_script(type_info, f"Step {step_name!r}")
    try:
        target = import_object(module, name, f"Step {step_name!r}")
    except SerializationError as exc:
        if exc.__cause__ is None:  # refused by name: nothing to install
            raise
        script = f" (the script {type_info['file']})" if type_info.get("file") else ""
        raise SerializationError(
            f"{exc} Install the package that provides the step class{script}, or register it "
            f"with `register_steps`. Registered steps: {known}."
        ) from exc.__cause__
    # The MRO itself, not issubclass(): an ABC accepts virtual subclasses.
    if not isinstance(target, type) or _Step not in target.__mro__:
        raise SerializationError(
            f"Step {step_name!r} names {module}.{name}, which is not a stillhouse step class "
            f"(it is {_kind(target)}); it was not called. A pipeline file may only name step "
            f"classes: check where the file came from. Registered steps: {known}."
        )
    return target


def _kind(target: Any) -> str:
    if isinstance(target, type):
        return f"the class {target.__module__}.{target.__qualname__}"
    return f"a {type(target).__name__}"


def pipeline_from_dict(
    data: dict[str, Any], base: str | Path | None = None, pipeline_cls: type[Pipeline] | None = None
) -> Pipeline:
    """Rebuild a pipeline; `base` is the folder inline-data references are relative to."""
    from stillhouse.core.pipeline import Pipeline
    from stillhouse.core.routing import RoutingBatchFunction

    check_format(data, "The pipeline dict")  # from_dict callers skip loads()
    spec = data["pipeline"]
    pipeline = (pipeline_cls or Pipeline)(
        name=spec.get("name"),
        description=spec.get("description"),
        enable_metadata=spec.get("enable_metadata", False),
        requirements=spec.get("requirements") or None,
        executor=spec.get("executor", "mp"),
    )
    steps: dict[str, Any] = {}
    with pipeline:
        for entry in spec.get("steps", []):
            fields = inline_data.resolve_references(dict(entry["step"]), base, entry["name"])
            type_info = fields.pop("type_info", {})
            fields.pop("runtime_parameters_info", None)
            for private in _STEP_FIELDS_NOT_DUMPED:
                fields.pop(private, None)
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
