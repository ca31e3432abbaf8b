"""The pipeline's graph of steps, its validation and its load stages.

Everything here is a pure function of the graph and the steps' declarations: no
I/O, no executors. `validate_dag` raises the first problem it finds with a
message that names the step, the field and the fix.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import networkx as nx

from stillhouse.core.errors import (
    CycleError,
    DuplicateStepNameError,
    InvalidMappingError,
    InvalidResourcesError,
    MissingInputsError,
    PipelineValidationError,
    RoutingError,
    RuntimeParameterError,
    StepConnectionError,
)

if TYPE_CHECKING:
    from stillhouse.core.routing import RoutingBatchFunction
    from stillhouse.core.step import _Step


class DAG:
    """Steps as nodes, connections as edges, routing functions on their source step."""

    def __init__(self) -> None:
        self.graph = nx.DiGraph()
        self.routing: dict[str, RoutingBatchFunction] = {}

    # -- building -------------------------------------------------------------------

    def add_step(self, step: _Step) -> None:
        if step.name in self.graph:
            raise DuplicateStepNameError(
                f"Two steps are named {step.name!r}. Step names must be unique within a "
                "pipeline: pass a different `name=` to one of them."
            )
        self.graph.add_node(step.name, step=step)

    def add_edge(self, source: str, target: str) -> None:
        for name in (source, target):
            if name not in self.graph:
                raise StepConnectionError(f"Step {name!r} is not part of this pipeline.")
        if source == target:
            raise CycleError(f"Step {source!r} is connected to itself. Remove that connection.")
        self.graph.add_edge(source, target)

    def set_routing(self, source: str, routing: RoutingBatchFunction) -> None:
        self.routing[source] = routing

    # -- reading --------------------------------------------------------------------

    @property
    def step_names(self) -> list[str]:
        return list(self.graph.nodes)

    def get_step(self, name: str) -> _Step:
        try:
            return self.graph.nodes[name]["step"]
        except KeyError:
            raise PipelineValidationError(
                f"Unknown step {name!r}. Steps in this pipeline: "
                f"{', '.join(map(repr, self.graph.nodes)) or 'none'}."
            ) from None

    def __iter__(self):
        return iter(self.graph.nodes)

    def __len__(self) -> int:
        return len(self.graph)

    def predecessors(self, name: str) -> list[str]:
        return list(self.graph.predecessors(name))

    def successors(self, name: str) -> list[str]:
        return list(self.graph.successors(name))

    @property
    def roots(self) -> list[str]:
        return [n for n in self.graph if self.graph.in_degree(n) == 0]

    @property
    def leaves(self) -> list[str]:
        return [n for n in self.graph if self.graph.out_degree(n) == 0]

    def topological_order(self) -> list[str]:
        """A deterministic topological order (ties broken by insertion order)."""
        position = {name: i for i, name in enumerate(self.graph.nodes)}
        return list(nx.lexicographical_topological_sort(self.graph, key=position.__getitem__))

    def routed_branches(self, source: str) -> list[str]:
        return self.successors(source) if source in self.routing else []


# -- validation -----------------------------------------------------------------------


def validate_dag(dag: DAG) -> RoutingLayout:
    """Raise a `PipelineValidationError` subclass for the first problem found; return
    the routing layout the checks computed (the execution plan is compiled from it)."""
    if len(dag) == 0:
        raise PipelineValidationError(
            "The pipeline has no steps. Create steps inside `with Pipeline(...) as pipeline:`."
        )
    _check_cycles(dag)
    # Before anything asks a step for its outputs: a step may only know them from its
    # runtime parameters (a loader reads its data's columns from `data_files`).
    for name in dag.step_names:
        _check_runtime_parameters(dag.get_step(name))
    layout = routing_layout(dag)
    for name in layout.order:
        step = dag.get_step(name)
        _check_connections(dag, step)
        _check_mappings(step)
        _check_resources(step)
        _check_process_signature(dag, step, layout)
    _check_inputs(dag)
    _check_overwrites(dag)
    _check_routing(dag, layout)
    return layout


def _check_cycles(dag: DAG) -> None:
    try:
        cycle = nx.find_cycle(dag.graph)
    except nx.NetworkXNoCycle:
        return
    path = " >> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
    raise CycleError(f"The steps form a cycle: {path}. Remove one of these connections.")


def _check_runtime_parameters(step: _Step) -> None:
    missing = step.missing_runtime_parameters()
    if missing:
        raise RuntimeParameterError(
            f"Step {step.name!r} is missing required runtime parameter(s) "
            f"{', '.join(missing)}. Set them in the step's constructor or with "
            f"run(parameters={{{step.name!r}: {{{missing[0]!r}: ...}}}})."
        )


def _check_connections(dag: DAG, step: _Step) -> None:
    preds = dag.predecessors(step.name)
    if step.is_generator and preds:
        raise StepConnectionError(
            f"Generator step {step.name!r} has predecessors {preds!r}, but generator steps "
            "produce rows and take no input. Remove the connections into it."
        )
    if not step.is_generator and not preds:
        raise StepConnectionError(
            f"Step {step.name!r} ({type(step).__name__}) has no predecessor, so it would never "
            "receive rows. Connect a generator step to it (`loader >> step`) or pass "
            "`dataset=` to `run()`."
        )


def _check_mappings(step: _Step) -> None:
    step.verify_inputs_mappings()  # InvalidMappingError naming the step and the key
    step.verify_outputs_mappings()
    _check_output_collisions(step)


def _check_output_collisions(step: _Step) -> None:
    """Two of a step's outputs written under one name after `output_mappings` (`a` mapped
    onto its own output `b`, or `a` and `b` both onto `x`): each row keeps one value and
    the other is lost. A swap (`{"a": "b", "b": "a"}`) keeps both and is allowed;
    `overwrite_columns` does not help, as which value survives would depend on the order
    of the row's keys."""
    mappings = step.output_mappings
    written: dict[str, list[str]] = {}
    for column in step.outputs:
        written.setdefault(mappings.get(column, column), []).append(column)
    for target, columns in written.items():
        if len(columns) < 2:
            continue
        mapped = [c for c in columns if mappings.get(c, c) != c]
        shown = ", ".join(f"{c!r}: {target!r}" for c in mapped)
        if target in columns:  # onto an output of its own that keeps its name
            key = mapped[0]
            raise InvalidMappingError(
                f"Step {step.name!r}: output_mappings {{{shown}}} writes output {key!r} onto "
                f"{target!r}, which is also one of the step's own outputs, so one of the two "
                f"columns' values would be lost. Map {key!r} to a new name (e.g. "
                f"{{{key!r}: '{key}_{step.name}'}}), or map {target!r} away too (e.g. "
                f"{{{key!r}: {target!r}, {target!r}: {key!r}}} swaps them)."
            )
        raise InvalidMappingError(
            f"Step {step.name!r}: output_mappings {{{shown}}} writes outputs "
            f"{', '.join(map(repr, columns))} onto the same column {target!r}, so all but one "
            "of their values would be lost. Map each output to a name of its own."
        )


def _check_resources(step: _Step) -> None:
    replicas = step.resources.replicas or 1
    if replicas > 1 and not step.is_normal:
        kind = "generator" if step.is_generator else "global"
        raise InvalidResourcesError(
            f"Step {step.name!r} is a {kind} step with resources.replicas={replicas}; only "
            "normal steps can have more than one replica. Set replicas=1."
        )


def _check_process_signature(dag: DAG, step: _Step, layout: RoutingLayout) -> None:
    if step.is_generator:
        return
    preds = dag.predecessors(step.name)
    if len(preds) <= 1 or step.name in layout.convergence_steps:
        return
    params = list(inspect.signature(step.process).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < len(preds):
        raise StepConnectionError(
            f"Step {step.name!r} has {len(preds)} predecessors {preds!r} but its process() "
            f"takes {len(positional)} input(s). Declare `def process(self, *inputs: StepInput)` "
            "or combine the predecessors first (CombineOutputs)."
        )


def available_columns(dag: DAG, name: str) -> set[str]:
    """Columns that reach step `name`: what its ancestors output, after their mappings."""
    columns: set[str] = set()
    for ancestor in nx.ancestors(dag.graph, name):
        step = dag.get_step(ancestor)
        columns.update(step.get_outputs())  # already after output_mappings
    return columns


def _check_inputs(dag: DAG) -> None:
    for name in dag.topological_order():
        step = dag.get_step(name)
        if step.is_generator:
            continue
        available = available_columns(dag, name)
        from_data = {source: column for column, source in step.input_mappings.items()}
        for source, required in step.get_inputs().items():  # already after input_mappings
            column = from_data.get(source, source)
            if required and source not in available:
                if source != column:
                    raise MissingInputsError(
                        f"Step {name!r} reads its input {column!r} from column {source!r} "
                        f"(input_mappings={{{column!r}: {source!r}}}), but no step before it "
                        f"produces {source!r}. Columns available: {sorted(available)!r}. Map "
                        f"{column!r} to one of them, or add a step that outputs {source!r}."
                    )
                raise MissingInputsError(
                    f"Step {name!r} needs input column {column!r}, but no step before it "
                    f"produces it. Columns available: {sorted(available)!r}. Add a step that "
                    f"outputs it, or map it with input_mappings={{{column!r}: '<column>'}}."
                )


def _check_overwrites(dag: DAG) -> None:
    """An output mapping onto a column that already reaches the step would replace it
    silently: refuse it unless the step lists the column in `overwrite_columns`."""
    for name in dag.topological_order():
        step = dag.get_step(name)
        read = set(step.get_inputs())  # already after input_mappings
        for key, target in step.output_mappings.items():
            if key == target or target in step.overwrite_columns:
                continue
            if target in read:
                origin = "an input of the step"
            else:
                producers = [a for a in dag.topological_order() if a in nx.ancestors(dag.graph, name)
                             and target in dag.get_step(a).get_outputs()]
                if not producers:
                    continue
                origin = f"a column step {producers[-1]!r} outputs"
            raise InvalidMappingError(
                f"Step {name!r}: output_mappings {{{key!r}: {target!r}}} writes over column "
                f"{target!r}, {origin}, replacing its values. Map the output to a new name "
                f"(e.g. {{{key!r}: '{target}_{name}'}}) or, to replace the column on purpose, "
                f"add overwrite_columns=[{target!r}] to step {name!r}."
            )


def _check_routing(dag: DAG, layout: RoutingLayout) -> None:
    for source, routing in dag.routing.items():
        branches = dag.successors(source)
        for branch in branches:
            step = dag.get_step(branch)
            if not step.is_normal:
                raise RoutingError(
                    f"Step {branch!r} follows routing function {routing.name!r} of step "
                    f"{source!r} but is a {'global' if step.is_global else 'generator'} step; "
                    "routed branches must be normal steps."
                )
        routing.validate(branches)
        for member in layout.regions[source]:
            if member in dag.routing:
                raise RoutingError(
                    f"Step {member!r} routes batches inside the branches routed by step "
                    f"{source!r}. Nested routing is not supported: converge the branches first."
                )
            if dag.get_step(member).is_global:
                raise RoutingError(
                    f"Global step {member!r} sits inside the branches routed by step "
                    f"{source!r}; converge the branches before a global step."
                )
    for name in layout.order:
        contexts = {layout.context[p] for p in dag.predecessors(name)}
        if len(contexts) > 1 and name not in layout.convergence_steps:
            raise RoutingError(
                f"Step {name!r} joins routed and unrouted inputs {dag.predecessors(name)!r}. "
                "Connect all routed branches of one routing function into it, and nothing else."
            )


# -- routing regions ------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingLayout:
    """Where routing puts every step, computed in one pass over the graph.

    `context[name]`: the routing step whose branches `name` belongs to, or None.
    `regions[source]`: the steps downstream of `source`'s routing, up to (excluding)
    its convergence step, in topological order. `convergence[source]`: the step where
    `source`'s branches rejoin (only for routings whose branches rejoin).
    """

    order: tuple[str, ...]
    context: Mapping[str, str | None]
    regions: Mapping[str, tuple[str, ...]]
    convergence: Mapping[str, str]

    @property
    def convergence_steps(self) -> frozenset[str]:
        return frozenset(self.convergence.values())


def routing_layout(dag: DAG) -> RoutingLayout:
    """The `RoutingLayout` of `dag` as it is now (a pure function: nothing is cached)."""
    order = tuple(dag.topological_order())
    context: dict[str, str | None] = {}
    convergence: dict[str, str] = {}
    for node in order:
        preds = dag.predecessors(node)
        routed_from = [p for p in preds if p in dag.routing]
        if routed_from:
            context[node] = routed_from[0]
            continue
        inherited = {context[p] for p in preds}
        if len(preds) > 1 and len(inherited) == 1 and None not in inherited:
            source = next(iter(inherited))
            convergence[source] = node
            context[node] = context[source]  # the convergence step leaves the region
        elif len(inherited) == 1:
            context[node] = next(iter(inherited))
        else:
            context[node] = None
    regions = {
        source: tuple(name for name in order if context[name] == source) for source in dag.routing
    }
    return RoutingLayout(order, context, regions, convergence)


def routed_region(dag: DAG, source: str) -> list[str]:
    """Steps downstream of `source`'s routing, up to (excluding) the convergence step."""
    return list(routing_layout(dag).regions.get(source, ()))


def routing_context(dag: DAG, name: str) -> str | None:
    """The routing step whose branches `name` belongs to, or None."""
    return routing_layout(dag).context[name]


def convergence_steps(dag: DAG) -> dict[str, str]:
    """`{routing step: its convergence step}` for the routings whose branches rejoin."""
    return dict(routing_layout(dag).convergence)


# -- load stages ----------------------------------------------------------------------

LoadGroups = Sequence[Sequence[Any]] | str | None


def load_stages(dag: DAG, load_groups: LoadGroups = None) -> list[list[str]]:
    """Split the steps into stages that are loaded one after the other.

    Each global step starts a new stage, so steps after it are loaded only once it
    ran. `load_groups` (lists of steps or names) isolate those steps in stages of
    their own, and the steps after a group wait for it as they wait for a global
    step; `"sequential_step_execution"` gives every step its own stage.
    """
    order = dag.topological_order()
    if load_groups == "sequential_step_execution":
        return [[name] for name in order]
    if isinstance(load_groups, str):
        raise PipelineValidationError(
            f"Unknown load_groups value {load_groups!r}. Pass a list of lists of steps, or "
            "'sequential_step_execution'."
        )
    # A group (a user's load group, or a global step alone) is a barrier: it is its own
    # stage and whatever follows it goes to a later one. Contract each group to one node
    # and give every node a level: one more than the deepest barrier before it.
    unit = {name: name for name in order}
    barrier: dict[str, int] = {}  # unit -> sort tiebreak (0: global step, i + 1: load_groups[i])
    for index, group in enumerate(load_groups or []):
        names = [_step_name(item) for item in group]
        for name in names:
            if name not in dag.graph:
                raise PipelineValidationError(
                    f"load_groups[{index}] names unknown step {name!r}. Steps: {order!r}."
                )
            if unit[name] != name:
                raise PipelineValidationError(
                    f"Step {name!r} is in more than one of load_groups ({unit[name]} and "
                    f"load_groups[{index}]). Put each step in one group only."
                )
        for name in names:
            unit[name] = f"load_groups[{index}]"
        if names:
            barrier[f"load_groups[{index}]"] = index + 1
    for name in order:
        if unit[name] == name and dag.get_step(name).is_global:
            barrier[name] = 0
    units = nx.DiGraph()
    units.add_nodes_from(dict.fromkeys(unit[name] for name in order))
    units.add_edges_from((unit[a], unit[b]) for a, b in dag.graph.edges if unit[a] != unit[b])
    if not nx.is_directed_acyclic_graph(units):
        raise PipelineValidationError(
            "load_groups cannot be honoured: a step outside a group sits between two steps "
            f"of that group ({nx.find_cycle(units)!r}). Put them in the same group."
        )
    level: dict[str, int] = {}
    for node in nx.topological_sort(units):
        level[node] = max(
            (level[p] + (1 if p in barrier else 0) for p in units.predecessors(node)), default=0
        )
    key = {
        name: (2 * level[unit[name]] + (1 if unit[name] in barrier else 0), barrier.get(unit[name], 0))
        for name in order
    }
    return [[n for n in order if key[n] == k] for k in sorted(set(key.values()))]


def stages_last_steps(dag: DAG, stages: list[list[str]]) -> list[list[str]]:
    """For each stage, its steps that no other step of the stage follows (sorted)."""
    result = []
    for stage in stages:
        sub = dag.graph.subgraph(stage)
        result.append(sorted(name for name in sub if sub.out_degree(name) == 0))
    return result


def _step_name(item: Any) -> str:
    return item if isinstance(item, str) else item.name


def iter_ancestors(dag: DAG, names: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for name in names:
        found |= nx.ancestors(dag.graph, name)
    return found
