"""What a step's code reads from its modules, as text for its signature.

A step's methods call helper functions and read constants defined beside them, or
in another module of the user's: `clean(row["text"])`, `PROMPT.format(...)`,
`helpers.THRESHOLD`, `pkg.helpers.clean`. Those are part of what the step computes,
so they are signed with it: a helper function or class by its source (and, in turn,
what it reads), a constant by the source of the statement that binds it (`LABELS =
["pos", "neg"]`), so a list the step fills while it runs does not change the
signature, but editing the literal does. A constant imported from another module
(`from ... import`, `import *`) is followed to the statement there; one with no such
statement is signed by its value when that value is immutable plain data (numbers,
strings, tuples, frozensets, compiled patterns).

What runs once, where code is defined, is read too: a class body outside its
methods (`helper = staticmethod(clean)`, `factor = FACTOR`, its decorators and
bases), a function's decorators and default values (`def h(x, k=K)`), and the
right-hand side of a constant's statement (`OPS = {"a": up}`, `N = mk()`). A function
a class binds under another name, or a decorator's wrapper, is signed by its own
source beside the function it wraps.

Not read: libraries (the standard library, anything installed in site-packages,
pydantic, stillhouse), objects that are neither code nor plain data, names looked up
by string (`getattr(module, "clean")`), annotations, and attributes reached through
anything but a module (`self.x`, `obj.attr`: what `obj`'s statement names is signed,
not what is done to it later).
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import sys
import sysconfig
import textwrap
import types
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any, NamedTuple

from stillhouse.core._references import module_name as recorded_module

_MAX_IMPORT_HOPS = 5
_LIBRARIES = frozenset({*sys.stdlib_module_names, "pydantic", "stillhouse"})
"""Top-level packages never read, wherever they are installed (stillhouse's step classes
are signed by their own source, not by the engine's helpers they call)."""


def code_reads(signed: list[tuple[Any, str]], source: Callable[[Any], str]) -> str:
    """The user code and constants that the classes and functions in `signed` read from
    their modules, at any depth, as text in a stable order. `signed`: (class or function,
    its source) signed already by the caller (not repeated); `source(obj)` gives the
    source of another function or class."""
    return _Reads(source).of(signed)


class _Reads:
    """One walk from signed code to what it reads; `parts` holds, per key (`module.name`
    for code, `module:name` for a constant), the texts signed under it."""

    def __init__(self, source: Callable[[Any], str]) -> None:
        self.source = source
        self.parts: dict[str, set[str]] = {}
        self.done: set[int] = set()  # ids of the functions and classes seen: not repeated
        self.code: list[tuple[Any, str | None]] = []  # (function or class, its source) to read
        self.reads: list[tuple[str, Any, str | None]] = []  # (name, value, module) to sign

    def of(self, signed: list[tuple[Any, str]]) -> str:
        self.done.update(id(obj) for obj, _ in signed)
        self.code.extend(reversed(signed))
        while self.code or self.reads:
            if not self.reads:
                obj, text = self.code.pop()
                found = self._class_reads(obj, text) if isinstance(obj, type) else self._function_reads(obj, text)
                self.reads.extend(reversed(list(found)))
                continue
            try:
                self._sign(*self.reads.pop())
            except Exception:  # an object that breaks when looked at (a lazy proxy)
                continue  # is not signed, as any object that is neither code nor a constant
        return "\n".join(f"# {key}\n" + "\n".join(sorted(self.parts[key])) for key in sorted(self.parts))

    def _sign(self, name: str, value: Any, module_name: str | None) -> None:
        """Put what `value` (read as `name` in `module_name`) contributes in `parts`, and
        queue what it reads in turn: the code of a function or class, the names a
        constant's statement reads (`OPS = {"a": up}`, `N = mk()`)."""
        value = _unwrapped(value)
        if isinstance(value, types.FunctionType | type):
            if id(value) in self.done:
                return
            self.done.add(id(value))
            module = _defining_module(value)
            if not _users_module(module):
                wrapped = vars(value).get("__wrapped__") if isinstance(value, types.FunctionType) else None
                if wrapped is not None:  # a library's decorator (`contextlib.contextmanager`) on the user's function
                    self.reads.append((name, wrapped, module_name))
                return
            text = self.source(value)
            qualname = value.__code__.co_qualname if isinstance(value, types.FunctionType) else value.__qualname__
            self.parts.setdefault(f"{recorded_module(module or '')}.{qualname}", set()).add(text)
            self.code.append((value, text))
            return
        if isinstance(value, types.ModuleType):
            return
        key = f"{recorded_module(module_name or '')}:{name}"
        if key in self.parts:
            return
        found = _constant_text(module_name, name, value)
        if found is None:
            return
        text, statement_module, reads = found
        self.parts[key] = {text}
        module = sys.modules.get(statement_module) if statement_module is not None else None
        if module is not None:
            self.reads.extend(reversed(list(_resolved(reads, vars(module)))))

    def _function_reads(self, function: types.FunctionType, text: str | None) -> Iterator[tuple[str, Any, str | None]]:
        """What a function reads: the names of its code, its closure, the function it
        wraps (`functools.wraps`), and the names its decorators and defaults read (its
        `def` line runs once, where the function is defined)."""
        yield from _names_read(function)
        wrapped = vars(function).get("__wrapped__")
        if wrapped is not None:
            yield "__wrapped__", wrapped, None
        if text is not None and (function.__defaults__ or function.__kwdefaults__ or text.lstrip().startswith("@")):
            yield from _resolved(_definition_names(text), function.__globals__)

    def _class_reads(self, klass: type, text: str | None) -> Iterator[tuple[str, Any, str | None]]:
        """What a class reads: the names its body reads outside its functions (bases,
        decorators, defaults, class attributes: `helper = staticmethod(clean)`, `factor =
        FACTOR`), and its functions: those defined in its body are read, the user's others
        (bound under another name, a decorator's wrapper) signed by their own source, a
        library's others read (`@step` makes a class whose `process` calls the function)."""
        module_name = klass.__module__
        if text is not None and _users_module(module_name):  # a library's class body reads the library
            module = sys.modules.get(module_name)
            namespace = vars(module) if module is not None else next(
                (f.__globals__ for _, f in functions_of(klass)), {})
            yield from _resolved(_definition_names(text), namespace)
        prefix = f"{klass.__qualname__}."
        for _, member in sorted(vars(klass).items()):
            inside = isinstance(member, type) and member.__qualname__.startswith(prefix) and member.__module__ == module_name
            if inside and id(member) not in self.done:
                self.done.add(id(member))
                self.code.append((member, None))  # a class in its body: its source is in this one's
        for name, function in functions_of(klass):
            module = _defining_module(function)
            inside = function.__code__.co_qualname.startswith(prefix) and module == module_name
            if not inside and _users_module(module):
                yield name, function, module_name  # signed by its own source
            elif id(function) not in self.done:  # its source is in the class's, or a library's
                self.done.add(id(function))  # (`@step` makes `process`): what it reads is read
                self.code.append((function, None))


def _defining_module(value: types.FunctionType | type) -> str | None:
    """The module whose code defines `value`: a function's globals (a `functools.wraps`
    wrapper has its wrapped function's `__module__`), a class's `__module__`."""
    if isinstance(value, types.FunctionType):
        return value.__globals__.get("__name__")
    return getattr(value, "__module__", None)


def _names_read(function: types.FunctionType) -> Iterator[tuple[str, Any, str | None]]:
    """(name, value, module whose statement binds it) for every module-level name the
    function's code (nested functions and comprehensions too) reads, every attribute
    it reads of a module of the user's, at any depth (`pkg.helpers.clean`), and every
    closure cell."""
    yield from _resolved(sorted(_code_names(function.__code__)), function.__globals__)
    cells = function.__closure__ or ()
    for name, cell in zip(function.__code__.co_freevars, cells, strict=False):
        try:
            yield name, cell.cell_contents, None
        except ValueError:  # an empty cell: the name is not bound yet
            continue


def _resolved(names: tuple[str, ...] | list[str], namespace: dict[str, Any]) -> Iterator[tuple[str, Any, str | None]]:
    """(name, value, module) for each of `names` (sorted) bound in `namespace`, and for
    each bound as an attribute of a module of the user's reached from it, at any depth:
    `pkg.helpers.clean` reads `pkg`, then `helpers` of it, then `clean` of that."""
    module_name = namespace.get("__name__")
    modules: list[types.ModuleType] = []
    for name in names:
        if name not in namespace or (name.startswith("__") and name.endswith("__")):
            continue  # `__name__`: "__main__" in a script, its module name elsewhere
        value = namespace[name]
        yield name, value, module_name
        if isinstance(value, types.ModuleType):
            modules.append(value)
    seen = {module_name}
    while modules:
        module = modules.pop(0)
        if module.__name__ in seen or not _users_module(module.__name__):
            continue
        seen.add(module.__name__)
        attributes = vars(module)
        for name in names:
            if name in attributes:
                value = attributes[name]
                yield name, value, module.__name__
                if isinstance(value, types.ModuleType):
                    modules.append(value)


@lru_cache(maxsize=512)
def _definition_names(text: str) -> tuple[str, ...]:
    """The names (and attribute names) read where a class or function is defined, in
    its source `text`, sorted: a class's decorators, bases and body outside its
    functions; a function's decorators and default values. Not annotations (types)."""
    try:
        tree = ast.parse(textwrap.dedent(text))
    except (SyntaxError, ValueError):  # a lambda's line, cut out of an expression
        return ()
    node = tree.body[0] if tree.body else None
    if isinstance(node, ast.ClassDef):
        expressions: list[ast.AST] = [*node.decorator_list, *node.bases, *node.keywords]
        expressions.extend(_body_expressions(node.body))
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        expressions = _definition_expressions(node)
    else:  # a lambda's line (`clean = lambda x, k=K: ...`): the defaults of the lambdas on it
        lambdas = (child for child in ast.walk(tree) if isinstance(child, ast.Lambda))
        expressions = [default for function in lambdas for default in _defaults(function.args)]
    return tuple(sorted({name for expression in expressions for name in _names_in(expression)}))


def _body_expressions(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """What a class body evaluates when the class is made: every statement, but of a
    function only its decorators and defaults, and of an annotated name its value."""
    for statement in body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _definition_expressions(statement)
        elif isinstance(statement, ast.ClassDef):
            yield from (*statement.decorator_list, *statement.bases, *statement.keywords)
            yield from _body_expressions(statement.body)
        elif isinstance(statement, ast.AnnAssign):
            if statement.value is not None:
                yield statement.value
        else:
            yield statement


def _definition_expressions(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    return [*function.decorator_list, *_defaults(function.args)]


def _defaults(arguments: ast.arguments) -> list[ast.expr]:
    return [*arguments.defaults, *(default for default in arguments.kw_defaults if default is not None)]


def _names_in(node: ast.AST) -> Iterator[str]:
    """The names an expression or statement reads, and the attribute names it reads of
    them (`pkg.helpers.clean`: `pkg`, `helpers`, `clean`)."""
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            yield child.id
        elif isinstance(child, ast.Attribute):
            yield child.attr


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


class _Statement(NamedTuple):
    """A module's top-level statements that assign one name: their source, and the
    names (and attribute names) their right-hand sides read, sorted."""

    text: str
    reads: tuple[str, ...]


def _constant_text(module_name: str | None, name: str, value: Any) -> tuple[str, str | None, tuple[str, ...]] | None:
    """How a module-level constant is signed: (the statement that binds it, followed
    through `from ... import`, the module it is in, the names it reads there); or its
    value when no statement is found and it is immutable plain data (then it reads
    nothing); None when it is not signed (a library's)."""
    hops = 0
    while module_name is not None and hops < _MAX_IMPORT_HOPS:
        if not _users_module(module_name):
            return None
        found = _binding(module_name, name)
        if found is None:
            break
        if isinstance(found, _Statement):
            return found.text, module_name, found.reads
        module_name, name = found  # `from module import name`: follow it there
        hops += 1
    text = _value_text(value)
    return None if text is None else (text, None, ())


def _binding(module_name: str, name: str) -> _Statement | tuple[str, str] | None:
    """The module's top-level statements that assign `name`, or the (module, name) it is
    imported from, or None when its source has neither."""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py"):
        return None
    try:
        stat = os.stat(file)
    except OSError:
        return None
    bindings, stars = _module_bindings(file, stat.st_mtime_ns, stat.st_size, getattr(module, "__package__", None) or "")
    if name in bindings:
        return bindings[name]
    for star in reversed(stars):  # `from helpers import *`: the last module imported that has it
        if name in getattr(sys.modules.get(star), "__dict__", {}):
            return star, name
    return None


@lru_cache(maxsize=256)
def _module_bindings(
    file: str, _mtime_ns: int, _size: int, package: str
) -> tuple[dict[str, _Statement | tuple[str, str]], tuple[str, ...]]:
    """Every top-level name a module file assigns (to its statements) or imports from
    another module (to that module and name), and the modules it imports `*` from, in
    order; the file's stamp keys the cache, so an edited file is read again."""
    try:
        with open(file, encoding="utf-8") as handle:
            text = handle.read()
        tree = ast.parse(text)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return {}, ()
    stars: list[str] = []
    assigned: dict[str, list[str]] = {}
    reads: dict[str, set[str]] = {}
    imported: dict[str, tuple[str, str]] = {}
    for statement in _top_level(tree.body):
        if isinstance(statement, ast.ImportFrom):
            source_module = _absolute(statement, package)
            for alias in statement.names:
                if source_module and alias.name == "*":
                    stars.append(source_module)
                elif source_module:
                    imported[alias.asname or alias.name] = (source_module, alias.name)
            continue
        targets = (
            statement.targets if isinstance(statement, ast.Assign)
            else [statement.target] if isinstance(statement, ast.AnnAssign | ast.AugAssign)
            else []
        )
        value = getattr(statement, "value", None)
        read = set(_names_in(value)) if value is not None else set()
        if isinstance(statement, ast.AugAssign):
            read.update(_names_in(statement.target))
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Name):
                    assigned.setdefault(node.id, []).append(ast.get_source_segment(text, statement) or "")
                    reads.setdefault(node.id, set()).update(read)
    statements = {name: _Statement("\n".join(texts), tuple(sorted(reads[name]))) for name, texts in assigned.items()}
    return {**imported, **statements}, tuple(stars)


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
