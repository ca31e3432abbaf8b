"""`@step`: turn a function into a Step class named after it.

The class is given the function's module and qualified name, so it pickles by
reference (spawn start method, Ray) exactly like a hand-written class does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal, get_args

from stillhouse.core.runtime import get_type_hints_safe
from stillhouse.core.step import GeneratorStep, GlobalStep, Step, _Step
from stillhouse.core.typing import StepColumns

StepType = Literal["normal", "global", "generator"]
_BASES: dict[str, type[_Step]] = {"normal": Step, "global": GlobalStep, "generator": GeneratorStep}


def _is_step_input(hint: Any) -> bool:
    args = get_args(hint)
    return bool(args) and args[-1] == "StepInput"


def step(
    inputs: StepColumns | None = None,
    outputs: StepColumns | None = None,
    step_type: StepType = "normal",
) -> Callable[[Callable[..., Any]], type[_Step]]:
    """Make a Step class from a function.

    Parameters other than the `StepInput`s (and a generator's `offset`) become fields
    of the class; annotate one `RuntimeParameter[...]` to set it at run time.
    """
    if step_type not in _BASES:
        raise ValueError(
            f"Unknown step_type {step_type!r}. Expected one of: 'normal', 'global', 'generator'."
        )

    def decorate(func: Callable[..., Any]) -> type[_Step]:
        hints = get_type_hints_safe(func)
        fields: dict[str, Any] = {}
        annotations: dict[str, Any] = {}
        takes_offset = False
        input_params: list[inspect.Parameter] = []
        for param in inspect.signature(func).parameters.values():
            hint = hints.get(param.name, Any)
            if param.kind is inspect.Parameter.VAR_POSITIONAL or _is_step_input(hint):
                input_params.append(param)
                continue
            if step_type == "generator" and param.name == "offset":
                takes_offset = True
                continue
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            annotations[param.name] = hints.get(param.name, Any)
            if param.default is not inspect.Parameter.empty:
                fields[param.name] = param.default
        field_names = list(annotations)

        def field_values(self: _Step) -> dict[str, Any]:
            return {name: getattr(self, name) for name in field_names}

        is_async = inspect.isasyncgenfunction(func)
        if step_type == "generator":
            process = _generator_process(func, field_values, takes_offset, is_async)
        else:
            process = _batch_process(func, field_values, is_async)
            # Show the function's inputs, not `*step_inputs`: validation counts them
            # against the step's predecessors.
            self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
            process.__signature__ = inspect.Signature([self_param, *input_params])  # type: ignore[attr-defined]

        namespace: dict[str, Any] = {
            "__annotations__": annotations,
            "__module__": func.__module__,
            "__qualname__": func.__qualname__,
            "__doc__": func.__doc__,
            "process": process,
            "inputs": property(lambda self: list(inputs or [])),
            "outputs": property(lambda self: list(outputs or [])),
            **fields,
        }
        if isinstance(inputs, dict):
            namespace["inputs"] = property(lambda self: dict(inputs))
        if isinstance(outputs, dict):
            namespace["outputs"] = property(lambda self: dict(outputs))
        cls = type(func.__name__, (_BASES[step_type],), namespace)
        cls._stillhouse_function = func  # the source the cache hashes
        return cls

    return decorate


def _batch_process(func: Callable[..., Any], field_values: Callable[[Any], dict[str, Any]], is_async: bool) -> Any:
    """The `process` method of a normal or global step made from `func`."""
    if is_async:

        async def aprocess(self: Step, *step_inputs: Any) -> Any:
            async for rows in func(*step_inputs, **field_values(self)):
                yield rows

        return aprocess

    def process(self: Step, *step_inputs: Any) -> Any:
        yield from func(*step_inputs, **field_values(self))

    return process


def _generator_process(
    func: Callable[..., Any], field_values: Callable[[Any], dict[str, Any]], takes_offset: bool, is_async: bool
) -> Any:
    """The `process` method of a generator step made from `func`: without an `offset`
    parameter, the first `offset` rows it yields are skipped."""
    if is_async:

        async def aprocess(self: GeneratorStep, offset: int = 0) -> Any:
            if takes_offset:
                async for item in func(offset=offset, **field_values(self)):
                    yield item
                return
            skipper = _Skipper(offset)
            async for rows, last in func(**field_values(self)):
                for item in skipper.feed(rows, last):
                    yield item

        return aprocess

    def process(self: GeneratorStep, offset: int = 0) -> Any:
        if takes_offset:
            yield from func(offset=offset, **field_values(self))
            return
        skipper = _Skipper(offset)
        for rows, last in func(**field_values(self)):
            yield from skipper.feed(rows, last)

    return process


class _Skipper:
    """Drops the first `skip` rows of a stream of `(rows, last)` batches."""

    def __init__(self, skip: int) -> None:
        self.skip = skip

    def feed(self, rows: list[Any], last: bool) -> list[tuple[list[Any], bool]]:
        if self.skip >= len(rows):
            self.skip -= len(rows)
            return [([], True)] if last else []
        rows, self.skip = rows[self.skip :], 0
        return [(rows, last)]
