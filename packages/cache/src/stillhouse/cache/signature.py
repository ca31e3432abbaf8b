"""Signatures: what a cached result depends on, as stable hashes.

A step's signature covers its class identity, its result-affecting fields (not
batch sizes, replicas or `use_cache`, never secrets), its code and that of every
model its fields hold (an LLM), how batches are routed into it (the routing
function's code too), whether rows carry metadata, and its predecessors'
signatures. Hashes use sha256 over sorted JSON, so they do not depend on the
process or on `PYTHONHASHSEED` (a set's items are sorted first).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import linecache
import re
import types
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from stillhouse.cache.code_reads import code_reads, functions_of
from stillhouse.core._references import class_module
from stillhouse.core.dag import DAG
from stillhouse.core.secrets import dump_without_secrets
from stillhouse.core.signatures import result_affecting
from stillhouse.core.step import BaseStep


def _hash(payload: Any) -> str:
    encoded = json.dumps(payload, sort_keys=True, default=repr, ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


def step_fields(step: BaseStep, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The step's result-affecting fields as plain data (`extra`: its `signature_extra()`,
    when the caller has it already)."""
    # `signature_extra()` adds what a step depends on beyond its fields (a dataset's commit,
    # files' mtimes) and replaces fields by name (inline rows by their hash).
    # Left out: the step's `exclude_from_signature` (batch sizes, resources, ...) and
    # that of every model in its fields (an LLM's timeout and limits), and secrets.
    # `serialize_as_any`: a model held in a field is dumped as what it is (a subclass's
    # own fields too), not as the field's declared type.
    extra = step.signature_extra() if extra is None else extra
    dumped = dump_without_secrets(step, exclude={"pipeline", *extra}, serialize_as_any=True)
    return {**result_affecting(dumped, step), **extra}


_ENGINE_MODULES = {"builtins", "abc", "typing", "stillhouse.core.step", "stillhouse.core.runtime",
                   "stillhouse.core.serializable"}
"""Modules whose classes are Python's, or the bases every step (and LLM) derives from:
their code is the engine's, not the step's. Matched whole, never as a prefix (`abcsteps`)."""


def _engine_class(klass: type) -> bool:
    module = getattr(klass, "__module__", "") or ""
    return module in _ENGINE_MODULES or module == "pydantic" or module.startswith("pydantic.")


def step_code(step: BaseStep, skip_fields: set[str] | frozenset[str] = frozenset()) -> str:
    """The source of the step's class, of the function `@step` made it from, and of the
    class of every model its fields hold (an LLM, a config), at any depth; a class is
    named beside its source, so swapping one class for another changes the code.
    `skip_fields`: fields not to look into (inline rows, hashed by `signature_extra`)."""
    classes: list[type] = []
    for klass in (type(step), *(type(model) for model in _held_models(step, skip_fields))):
        classes.extend(k for k in klass.__mro__ if k not in classes and not _engine_class(k))
    parts = []
    signed: list[tuple[Any, str]] = []
    for klass in classes:
        # A script's class is named by the script's module name, not "__main__": a run
        # from the script and from `pipeline run --config` share their signatures.
        text = _source(klass)
        parts.append(f"# {class_module(klass)}.{klass.__qualname__}\n{text}")
        signed.append((klass, text))
        function = vars(klass).get("_stillhouse_function")
        if function is not None:
            text = _source(function)
            parts.append(text)
            signed.append((function, text))
    # The helpers and constants that code reads from its modules (docs/caching.md).
    parts.append(code_reads(signed, _source))
    return "\n".join(parts)


def _held_models(model: BaseModel, skip_fields: set[str] | frozenset[str] = frozenset()) -> Iterator[BaseModel]:
    """Every model `model`'s fields hold, at any depth (in lists, tuples and dicts too)."""
    stack = [value for name, value in vars(model).items() if name not in skip_fields and name != "pipeline"]
    while stack:
        value = stack.pop()
        if isinstance(value, BaseModel):
            yield value
            stack.extend(vars(value).values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.values())


def _source(obj: Any) -> str:
    """The source of a class or function; a function's own, not that of the function it
    wraps (`functools.wraps`: inspect would unwrap it)."""
    try:
        if isinstance(obj, types.FunctionType):
            return _function_source(obj)
        return (_class_source(obj) if isinstance(obj, type) else None) or inspect.getsource(obj)
    except (OSError, TypeError):
        # Defined where there is no source file (`python -c`, a REPL): the bytecode of
        # every function of the class, with its constants and names.
        functions = [(obj.__name__, obj)] if isinstance(obj, types.FunctionType) else functions_of(obj)
        codes = [f"{name}:{_code_text(f.__code__)}" for name, f in functions]
        return "\n".join(codes) if codes else f"{obj.__module__}.{obj.__qualname__}"


def _function_source(function: types.FunctionType) -> str:
    """The block of `function`'s own code (from its first decorator), cut from its file
    with `inspect.getblock`, as `inspect.getsource(function.__code__)` would. Not that call:
    a code object has no module, so inspect finds one by the real path of every module
    loaded (50 ms a run, on every run's signature)."""
    code = function.__code__
    file = inspect.getsourcefile(function)
    if not file:
        raise OSError(f"no source file for {function.__qualname__}")
    linecache.checkcache(file)  # an edited file is read again, as inspect does
    lines = linecache.getlines(file, function.__globals__)
    start = code.co_firstlineno - 1
    if not 0 <= start < len(lines):
        raise OSError(f"{file} has no line {code.co_firstlineno}")
    return "".join(inspect.getblock(lines[start:]))


def _class_source(klass: type) -> str | None:
    """A class's source, with its decorators: the `class Name` block of its file that
    holds its methods' code (several classes of one name: the right one; inspect takes
    the first), cut with `inspect.getblock`, where `inspect.getsource` parses the whole
    module (25 ms for a large one, on every run's signature). None when no line starts it."""
    file = inspect.getsourcefile(klass)
    if not file:
        return None
    linecache.checkcache(file)  # an edited file is read again, as inspect does
    lines = linecache.getlines(file)
    starts = re.compile(rf"\s*class\s+{re.escape(klass.__name__)}\b")
    found = [number for number, line in enumerate(lines) if starts.match(line)]
    methods = {function.__code__.co_firstlineno - 1 for _, function in functions_of(klass)}
    chosen: tuple[int, list[str]] | None = None
    for start in found:
        block = inspect.getblock(lines[start:])
        if not methods or any(start <= line < start + len(block) for line in methods):
            chosen = (start, block)  # without methods to tell them apart: the last one wins, as on import
            if methods:
                break
    if chosen is None:
        return None
    start, block = chosen
    first = start
    while first > 0 and lines[first - 1].lstrip().startswith("@"):
        first -= 1
    return "".join(lines[first:start] + block)


def _code_text(code: types.CodeType) -> str:
    """A code object as text that changes with its bytecode, constants and names, and
    is the same in every process (not `marshal`, whose output depends on refcounts)."""
    consts = [
        _code_text(c) if isinstance(c, types.CodeType)
        else repr(sorted(map(repr, c))) if isinstance(c, frozenset)
        else repr(c)
        for c in code.co_consts
    ]
    return repr((code.co_code.hex(), consts, code.co_names, code.co_varnames))


def _routing(routing: Any) -> dict[str, Any]:
    """What a routing function's dump says, and its code when it is not a stillhouse
    factory (whose arguments, in the dump, say what it does)."""
    dumped = {k: v for k, v in routing.dump().items() if k != "description"}
    if routing.user_function is not None:
        function = routing.user_function
        text = _source(function)
        code = text + "\n" + code_reads([(function, text)], _source)
        dumped["code"] = hashlib.sha256(code.encode()).hexdigest()
    return dumped


def routing_identity(dag: DAG, name: str) -> str | None:
    """A short hash of the routing function after step `name` (its dump and code), or
    None. Routes a step's store recorded are replayed only for the same one: the routing
    is not in that step's signature (editing it must not recompute the step), but its
    successors' signatures hold it."""
    routing = dag.routing.get(name)
    return None if routing is None else _hash(_routing(routing))[:16]


def step_signature_parts(
    dag: DAG, name: str, signatures: dict[str, str], *, enable_metadata: bool = False
) -> dict[str, Any]:
    step = dag.get_step(name)
    cls = type(step)
    preds = dag.predecessors(name)
    extra = step.signature_extra()
    parts = {
        "class": f"{class_module(cls)}.{cls.__qualname__}",  # a script's class: not "__main__"
        "kind": "generator" if step.is_generator else "global" if step.is_global else "normal",
        # One short hash per field: explain can still name the field that changed, and a
        # generator's data (100k rows) does not end up verbatim in every meta.json.
        "fields": {name: _hash(value)[:16] for name, value in step_fields(step, extra).items()},
        "code": hashlib.sha256(step_code(step, set(extra)).encode()).hexdigest(),
        "predecessors": [signatures[p] for p in preds],
        "routing": [_routing(dag.routing[p]) for p in preds if p in dag.routing],
    }
    if enable_metadata:  # rows carry `stillhouse_metadata`; without, the parts are as before
        parts["metadata"] = True
    return parts


def signature_table(dag: DAG, *, enable_metadata: bool = False) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Every step's signature and the parts it hashes, computed once, in topological order.

    Computing a step's parts may be costly (`signature_extra()` asks a Hub for a commit or
    lists files), so a run computes them here once and hands them around.
    `enable_metadata`: the pipeline's; rows stored with metadata are not rows without."""
    signatures: dict[str, str] = {}
    parts: dict[str, dict[str, Any]] = {}
    for name in dag.topological_order():
        parts[name] = step_signature_parts(dag, name, signatures, enable_metadata=enable_metadata)
        signatures[name] = _hash(parts[name])
    return signatures, parts


def step_signatures(dag: DAG, *, enable_metadata: bool = False) -> dict[str, str]:
    """Every step's signature, computed in topological order."""
    return signature_table(dag, enable_metadata=enable_metadata)[0]


def explain_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Which parts of a step's signature differ, in words."""
    reasons = []
    if old.get("class") != new.get("class"):
        reasons.append(f"class changed ({old.get('class')} -> {new.get('class')})")
    old_fields, new_fields = old.get("fields", {}), new.get("fields", {})
    for field in sorted(set(old_fields) | set(new_fields)):
        if old_fields.get(field) != new_fields.get(field):
            reasons.append(f"field {field!r} changed")
    if old.get("code") != new.get("code"):
        reasons.append("its code changed")
    if old.get("routing") != new.get("routing"):
        reasons.append("the routing into it changed")
    if old.get("metadata") != new.get("metadata"):
        reasons.append("the pipeline's enable_metadata changed")
    if old.get("predecessors") != new.get("predecessors"):
        reasons.append("a step before it changed")
    return reasons
