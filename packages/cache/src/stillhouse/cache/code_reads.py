"""What a step's code reads from its modules, as text for its signature.

A step's methods call helper functions and read constants defined beside them, or
in another module of the user's: `clean(row["text"])`, `PROMPT.format(...)`,
`helpers.THRESHOLD`. Those are part of what the step computes, so they are signed
with it: a helper function or class by its source (and, in turn, what it reads), a
constant by the source of the statement that binds it (`LABELS = ["pos", "neg"]`),
so a list the step fills while it runs does not change the signature, but editing
the literal does. A constant imported from another module is followed to the
statement there; one with no such statement is signed by its value when that value
is immutable plain data (numbers, strings, tuples, frozensets, compiled patterns).

Not read: libraries (the standard library, anything installed in site-packages,
pydantic, stillhouse), objects that are neither code nor plain data, and
attributes reached through anything but a module (`self.x`, `obj.attr`).
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from stillhouse.core._references import module_name as recorded_module

_MAX_IMPORT_HOPS = 5
_LIBRARIES = frozenset({*sys.stdlib_module_names, "pydantic", "stillhouse"})
"""Top-level packages never read, wherever they are installed (stillhouse's step classes
are signed by their own source, not by the engine's helpers they call)."""


def code_reads(functions: list[types.FunctionType], source: Callable[[Any], str], known: set[type]) -> str:
    """The user code and constants `functions` read from their modules, at any depth,
    as text in a stable order. `source(obj)` gives a function's or class's source;
    `known`: classes signed already (not repeated)."""
    parts: dict[str, str] = {}
    queue = [f for f in functions if isinstance(f, types.FunctionType)]
    done: set[int] = {id(f) for f in functions} | {id(k) for k in known}
    while queue:
        function = queue.pop()
        for name, value, module_name in _names_read(function):
            try:
                queue.extend(_sign(name, value, module_name, source, parts, done))
            except Exception:  # an object that breaks when looked at (a lazy proxy)
                continue  # is not signed, as any object that is neither code nor a constant
    return "\n".join(f"# {key}\n{parts[key]}" for key in sorted(parts))


def _sign(
    name: str, value: Any, module_name: str | None, source: Callable[[Any], str], parts: dict[str, str], done: set[int]
) -> list[types.FunctionType]:
    """Put what `value` (read as `name` in `module_name`) contributes in `parts`; return the
    functions whose reads to follow in turn."""
    value = _unwrapped(value)
    if isinstance(value, types.FunctionType | type):
        if id(value) in done or not _users_module(getattr(value, "__module__", None)):
            return []
        done.add(id(value))
        parts[f"{recorded_module(value.__module__)}.{value.__qualname__}"] = source(value)
        return [f for _, f in functions_of(value)] if isinstance(value, type) else [value]
    if not isinstance(value, types.ModuleType):
        key = f"{recorded_module(module_name or '')}:{name}"
        if key not in parts:
            text = _constant_text(module_name, name, value)
            if text is not None:
                parts[key] = text
    return []


def _names_read(function: types.FunctionType) -> Iterator[tuple[str, Any, str | None]]:
    """(name, value, module whose statement binds it) for every module-level name the
    function's code (nested functions and comprehensions too) reads, every attribute
    it reads of a module of the user's (`helpers.clean`), and every closure cell."""
    names = sorted(_code_names(function.__code__))
    module_globals = function.__globals__
    module_name = module_globals.get("__name__")
    for name in names:
        if name not in module_globals or (name.startswith("__") and name.endswith("__")):
            continue  # `__name__`: "__main__" in a script, its module name elsewhere
        value = module_globals[name]
        yield name, value, module_name
        if isinstance(value, types.ModuleType) and _users_module(value.__name__):
            for attribute in names:
                if attribute in vars(value):
                    yield attribute, vars(value)[attribute], value.__name__
    cells = function.__closure__ or ()
    for name, cell in zip(function.__code__.co_freevars, cells, strict=False):
        try:
            yield name, cell.cell_contents, None
        except ValueError:  # an empty cell: the name is not bound yet
            continue


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _code_names(constant)
    return names


def functions_of(klass: Any) -> list[tuple[str, types.FunctionType]]:
    """A class's own functions by name: methods, static and class methods, properties."""
    found = []
    for name, member in sorted(vars(klass).items()):
        for candidate in (member, getattr(member, "__func__", None), getattr(member, "fget", None)):
            if isinstance(candidate, types.FunctionType):
                found.append((name, candidate))
                break
    return found


def _unwrapped(value: Any) -> Any:
    """A decorated function (`functools.lru_cache`, `functools.wraps`) as written."""
    if not isinstance(value, types.FunctionType | type) and hasattr(value, "__wrapped__"):
        try:
            return inspect.unwrap(value)
        except ValueError:  # a cycle of wrappers
            return value
    return value


def _users_module(module_name: str | None) -> bool:
    """Whether a module is the user's code, not a library's."""
    if not module_name:
        return False
    if module_name.partition(".")[0] in _LIBRARIES:
        return False
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    return file is None or not _installed(file)  # no file: defined by `exec`, a notebook


def _installed(file: str) -> bool:
    path = os.path.realpath(file)
    return any(path.startswith(root + os.sep) for root in _library_roots())


@lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    roots = {sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    import site

    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    roots.add(site.getusersitepackages() if hasattr(site, "getusersitepackages") else None)
    return tuple(sorted(os.path.realpath(root) for root in roots if root))


def _constant_text(module_name: str | None, name: str, value: Any) -> str | None:
    """How a module-level constant is signed: the statement that binds it, followed
    through `from ... import`; or its value when no statement is found and it is
    immutable plain data; None when it is not signed (a library's)."""
    hops = 0
    while module_name is not None and hops < _MAX_IMPORT_HOPS:
        if not _users_module(module_name):
            return None
        found = _binding(module_name, name)
        if found is None:
            break
        if isinstance(found, str):
            return found
        module_name, name = found  # `from module import name`: follow it there
        hops += 1
    return _value_text(value)


def _binding(module_name: str, name: str) -> str | tuple[str, str] | None:
    """The source of the module's top-level statements that assign `name` (joined), or
    the (module, name) it is imported from, or None when its source has neither."""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py"):
        return None
    try:
        stat = os.stat(file)
    except OSError:
        return None
    bindings = _module_bindings(file, stat.st_mtime_ns, stat.st_size, getattr(module, "__package__", None) or "")
    return bindings.get(name)


@lru_cache(maxsize=256)
def _module_bindings(file: str, _mtime_ns: int, _size: int, package: str) -> dict[str, str | tuple[str, str]]:
    """Every top-level name a module file assigns (to its statements' source) or imports
    from another module (to that module and name); the file's stamp keys the cache, so
    an edited file is read again."""
    try:
        with open(file, encoding="utf-8") as handle:
            text = handle.read()
        tree = ast.parse(text)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return {}
    assigned: dict[str, list[str]] = {}
    imported: dict[str, tuple[str, str]] = {}
    for statement in _top_level(tree.body):
        if isinstance(statement, ast.ImportFrom):
            source_module = _absolute(statement, package)
            for alias in statement.names:
                if source_module and alias.name != "*":
                    imported[alias.asname or alias.name] = (source_module, alias.name)
            continue
        targets = (
            statement.targets if isinstance(statement, ast.Assign)
            else [statement.target] if isinstance(statement, ast.AnnAssign | ast.AugAssign)
            else []
        )
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Name):
                    assigned.setdefault(node.id, []).append(ast.get_source_segment(text, statement) or "")
    return {**imported, **{name: "\n".join(texts) for name, texts in assigned.items()}}


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """A module's statements, and those inside its top-level `if`, `try` and `with` blocks."""
    for statement in body:
        yield statement
        for block in ("body", "orelse", "finalbody"):
            if isinstance(statement, ast.If | ast.Try | ast.With):
                yield from _top_level(getattr(statement, block, []))
        for handler in getattr(statement, "handlers", []):
            yield from _top_level(handler.body)


def _absolute(statement: ast.ImportFrom, package: str) -> str | None:
    if not statement.level:
        return statement.module
    parts = package.split(".") if package else []
    if statement.level - 1 > len(parts):
        return None
    base = parts[: len(parts) - (statement.level - 1)]
    return ".".join([*base, statement.module] if statement.module else base) or None


def _value_text(value: Any, depth: int = 0) -> str | None:
    """Immutable plain data as text that is the same in every process; None otherwise."""
    if depth > 20:
        return None
    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        return repr(value)
    if isinstance(value, re.Pattern):
        return f"re.compile({value.pattern!r}, {int(value.flags)})"
    if isinstance(value, tuple | frozenset):
        items = [_value_text(item, depth + 1) for item in value]
        if any(item is None for item in items):
            return None
        items = sorted(items) if isinstance(value, frozenset) else items  # type: ignore[type-var]
        return f"{type(value).__name__}({', '.join(items)})"  # type: ignore[arg-type]
    return None
