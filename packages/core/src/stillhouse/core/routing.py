"""Routing batch functions: which successors a step's batch goes to.

`a >> route >> [b, c]` sends each batch of `a` to the successors `route`
chooses. The engine calls the function once per batch and records the answer, so
a resumed run routes exactly as the interrupted one did.
"""

from __future__ import annotations

import functools
import inspect
import random
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

from pydantic import BaseModel, ConfigDict, PrivateAttr, TypeAdapter, ValidationError

from stillhouse.core import _references
from stillhouse.core.errors import RoutingError, SerializationError

if TYPE_CHECKING:
    from stillhouse.core.step import _Step

RoutingFunction = Callable[[list[str]], list[str]]


class RoutingBatchFunction(BaseModel):
    """Wraps `fn(steps: list[str]) -> list[str]` so it can sit between steps with `>>`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    routing_function: RoutingFunction
    description: str | None = None

    _step: Any = PrivateAttr(default=None)
    _factory: tuple[str, str, dict[str, Any]] | None = PrivateAttr(default=None)
    _validator: Callable[[list[str]], str | None] | None = PrivateAttr(default=None)

    def __call__(self, steps: list[str]) -> list[str]:
        return list(self.routing_function(steps))

    def validate(self, successors: list[str]) -> None:
        """Raise `RoutingError` when this function cannot route among `successors` (the
        steps it is followed by), before the run starts. Pipeline validation calls it;
        a factory states its own requirement (`sample_n_steps(n)` needs n successors)."""
        problem = self._validator(list(successors)) if self._validator is not None else None
        if problem is not None:
            after = f" after step {self._step.name!r}" if self._step is not None else ""
            raise RoutingError(f"Routing function {self.name!r}{after}: {problem}")

    def _for_upstream(self, step: _Step) -> RoutingBatchFunction:
        """This function, or a copy of it when it already follows another step of the
        same pipeline: each use of one routing function object is its own routing."""
        same_pipeline = self._step is not None and self._step.pipeline is step.pipeline
        if not same_pipeline or self._step is step:
            return self
        copy = self.model_copy()
        copy._factory = self._factory
        copy._validator = self._validator
        copy._step = None
        return copy

    def _set_upstream(self, step: _Step) -> None:
        same_pipeline = self._step is not None and self._step.pipeline is step.pipeline
        if same_pipeline and self._step is not step:
            raise RoutingError(
                f"Routing function {self.name!r} already follows step {self._step.name!r}, "
                f"so it cannot also follow {step.name!r}. Create one routing function per step."
            )
        self._step = step

    def __rshift__(self, other: list[_Step]) -> list[_Step]:
        from stillhouse.core.step import _Step

        if not isinstance(other, list) or not all(isinstance(s, _Step) for s in other):
            raise RoutingError(
                f"A routing function must be followed by a list of steps, got {other!r}. "
                "Write `step >> route >> [step_a, step_b]`."
            )
        if self._step is None:
            raise RoutingError(
                f"Routing function {self.name!r} has no upstream step. "
                "Write `step >> route >> [step_a, step_b]`."
            )
        self._step.connect(*other, routing_batch_function=self)
        return other

    @property
    def user_function(self) -> RoutingFunction | None:
        """The function the user wrote, whose code the cache signs; None for a stillhouse
        factory (`sample_n_steps`), whose arguments in `dump()` say what it does."""
        return self.routing_function if self._factory is None else None

    @property
    def name(self) -> str:
        if self._factory is not None:
            return self._factory[1]
        return getattr(self.routing_function, "__name__", "routing_function")

    def dump(self) -> dict[str, Any]:
        """The serialisable description of this function (also its signature input)."""
        if self._factory is not None:
            module, name, kwargs = self._factory
        else:
            fn = self.routing_function
            # A function of the script being run: the script's module name, not `__main__`
            # (the file's `type_info.file` says where it is; see `serialization.routing_to_dict`).
            module, name, kwargs = _references.module_name(fn.__module__), fn.__qualname__, {}
        # distilabel's layout: the step it follows, and the factory's kwargs in type_info.
        return {
            "step": self._step.name if self._step is not None else None,
            "description": self.description,
            "type_info": {"module": module, "name": name, "kwargs": kwargs},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoutingBatchFunction:
        """Rebuild from `dump()` (distilabel's layout, or stillhouse's older top-level
        `kwargs`); the step it follows is set when it is wired again with `>>`."""
        return cls.from_dump(data)

    @classmethod
    def from_dump(cls, data: dict[str, Any]) -> RoutingBatchFunction:
        """Rebuild from `dump()`: only a function decorated with `routing_batch_function`, or
        a stillhouse routing factory (`sample_n_steps`) called with pydantic-validated
        arguments. Anything else a file names is refused before it is called."""
        from stillhouse.core.serialization import import_object, import_script

        info = data.get("type_info") or {}
        if not isinstance(info, dict):
            info = {}
        module, name = info.get("module"), info.get("name")
        import_script(info, "The routing function")  # one the user's script defines
        try:
            target = import_object(module, name, "The routing function")
        except SerializationError as exc:
            if exc.__cause__ is None or not info.get("file"):
                raise
            raise SerializationError(
                f"{exc} The file says the script {info['file']} defines it: check that it is there."
            ) from exc.__cause__
        kwargs = info.get("kwargs") or data.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise SerializationError(
                f"The routing function {module}.{name} has kwargs {kwargs!r}; they must be a "
                "mapping of argument names to values."
            )
        if RoutingBatchFunction in type(target).__mro__:
            if kwargs:
                raise SerializationError(
                    f"The routing function {module}.{name} takes no arguments, but the file "
                    f"gives it {sorted(kwargs)!r}. Remove them."
                )
            copy = cls(routing_function=target.routing_function, description=_saved_description(data, target))
            copy._factory = target._factory
            copy._validator = target._validator
            return copy
        if any(target is factory for factory in _FACTORIES):
            made = target(**kwargs)
            made.description = _saved_description(data, made)
            return made
        raise SerializationError(
            f"The routing function {module}.{name} is not a stillhouse routing function (it is "
            f"a {type(target).__name__}); it was not called. A pipeline file may only name "
            "functions decorated with @routing_batch_function or made by sample_n_steps: "
            "check where the file came from."
        )


def _saved_description(data: dict[str, Any], made: RoutingBatchFunction) -> str | None:
    """The description the file kept (a user may have set their own, as in distilabel),
    or the function's own when the file has none."""
    saved = data.get("description")
    return saved if isinstance(saved, str) else made.description


@overload
def routing_batch_function(func: RoutingFunction) -> RoutingBatchFunction: ...
@overload
def routing_batch_function(
    func: str | None = None, *, description: str | None = None
) -> Callable[[RoutingFunction], RoutingBatchFunction]: ...
def routing_batch_function(func=None, *, description=None):
    """Decorate `fn(steps) -> steps` to use it between steps; with or without `()`, and
    with the description as distilabel's only argument (`@routing_batch_function("why")`)."""
    if isinstance(func, str):
        func, description = None, func

    def wrap(fn: RoutingFunction) -> RoutingBatchFunction:
        return RoutingBatchFunction(routing_function=fn, description=description or fn.__doc__)

    return wrap(func) if func is not None else wrap


_FACTORIES: list[Callable[..., RoutingBatchFunction]] = []
"""Functions that build routing functions; the only callables a pipeline file may call."""


def _routing_factory(fn: Callable[..., RoutingBatchFunction]) -> Callable[..., RoutingBatchFunction]:
    """Mark a function that builds routing functions, so YAML can rebuild them.

    Its arguments are validated by pydantic against its annotations (they may come from a
    file), then recorded so the routing function can be dumped again.
    """
    hints = typing.get_type_hints(fn)

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> RoutingBatchFunction:
        try:
            kwargs = dict(inspect.signature(fn).bind(*args, **kwargs).arguments)
        except TypeError as exc:
            raise RoutingError(f"{fn.__name__}() got bad arguments: {exc}.") from None
        for name, value in kwargs.items():
            try:
                kwargs[name] = TypeAdapter(hints.get(name, Any)).validate_python(value)
            except ValidationError as exc:
                problem = "; ".join(error["msg"] for error in exc.errors())
                raise RoutingError(
                    f"{fn.__name__}() got {name}={value!r}: {problem}."
                ) from None
        made = fn(**kwargs)
        made._factory = (fn.__module__, fn.__name__, kwargs)
        return made

    _FACTORIES.append(build)
    return build


@_routing_factory
def sample_n_steps(n: int) -> RoutingBatchFunction:
    """Send each batch to `n` successors chosen at random."""
    if n < 1:
        raise RoutingError(f"sample_n_steps needs n >= 1, got n={n!r}.")

    def too_few(steps: list[str]) -> str | None:
        if n <= len(steps):
            return None
        return (f"sample_n_steps({n}) cannot choose {n} of only {len(steps)} successors "
                f"{steps!r}. Lower n or add successors.")

    def sample(steps: list[str]) -> list[str]:
        problem = too_few(steps)
        if problem is not None:
            raise RoutingError(problem)
        return random.sample(steps, n)

    made = RoutingBatchFunction(
        routing_function=sample, description=f"Sample {n} steps from the list of downstream steps."
    )
    made._validator = too_few
    return made

