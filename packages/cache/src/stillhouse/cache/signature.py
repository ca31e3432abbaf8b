"""Signatures: what a cached result depends on, as stable hashes.

A step's signature covers its class identity, its result-affecting fields (not
batch sizes, replicas or `use_cache`, never secrets), its code, how batches are
routed into it, and its predecessors' signatures. Hashes use sha256 over sorted
JSON, so they do not depend on the process or on `PYTHONHASHSEED`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any

from stillhouse.core._references import class_module
from stillhouse.core.dag import DAG
from stillhouse.core.secrets import dump_without_secrets
from stillhouse.core.signatures import result_affecting
from stillhouse.core.step import BaseStep


def _hash(payload: Any) -> str:
    encoded = json.dumps(payload, sort_keys=True, default=repr, ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


def step_fields(step: BaseStep) -> dict[str, Any]:
    # `signature_extra()` adds what a step depends on beyond its fields (a dataset's commit,
    # files' mtimes) and replaces fields by name (inline rows by their hash).
    # Left out: the step's `exclude_from_signature` (batch sizes, resources, ...) and
    # that of every model in its fields (an LLM's timeout and limits), and secrets.
    extra = step.signature_extra()
    dumped = dump_without_secrets(step, exclude={"pipeline", *extra})
    return {**result_affecting(dumped, step), **extra}


def step_code(step: BaseStep) -> str:
    """The source of the step's class and of the function `@step` made it from."""
    parts = []
    for klass in type(step).__mro__:
        module = getattr(klass, "__module__", "")
        if module.startswith(("stillhouse.core.step", "pydantic", "abc", "builtins")):
            continue
        parts.append(_source(klass))
        function = vars(klass).get("_stillhouse_function")
        if function is not None:
            parts.append(_source(function))
    return "\n".join(parts)


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        # Defined where there is no source file (a REPL): fall back to bytecode.
        code = getattr(obj, "__code__", None) or getattr(getattr(obj, "process", None), "__code__", None)
        return repr(code.co_code) if code is not None else f"{obj.__module__}.{obj.__qualname__}"


def step_signature_parts(dag: DAG, name: str, signatures: dict[str, str]) -> dict[str, Any]:
    step = dag.get_step(name)
    cls = type(step)
    preds = dag.predecessors(name)
    return {
        "class": f"{class_module(cls)}.{cls.__qualname__}",  # a script's class: not "__main__"
        "kind": "generator" if step.is_generator else "global" if step.is_global else "normal",
        # One short hash per field: explain can still name the field that changed, and a
        # generator's data (100k rows) does not end up verbatim in every meta.json.
        "fields": {name: _hash(value)[:16] for name, value in step_fields(step).items()},
        "code": hashlib.sha256(step_code(step).encode()).hexdigest(),
        "predecessors": [signatures[p] for p in preds],
        "routing": [
            {k: v for k, v in dag.routing[p].dump().items() if k != "description"}
            for p in preds
            if p in dag.routing
        ],
    }


def signature_table(dag: DAG) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Every step's signature and the parts it hashes, computed once, in topological order.

    Computing a step's parts may be costly (`signature_extra()` asks a Hub for a commit or
    lists files), so a run computes them here once and hands them around."""
    signatures: dict[str, str] = {}
    parts: dict[str, dict[str, Any]] = {}
    for name in dag.topological_order():
        parts[name] = step_signature_parts(dag, name, signatures)
        signatures[name] = _hash(parts[name])
    return signatures, parts


def step_signatures(dag: DAG) -> dict[str, str]:
    """Every step's signature, computed in topological order."""
    return signature_table(dag)[0]


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
    if old.get("predecessors") != new.get("predecessors"):
        reasons.append("a step before it changed")
    return reasons
