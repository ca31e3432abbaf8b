"""`ExecutionPlan`: the DAG compiled once per run into what the engine looks up.

Validation computes the routing layout (`dag.routing_layout`); `compile_plan` adds
the load stages, each step's kind, neighbours and lineage handling. `run_pipeline`
puts the plan in `RunContext.plan`; the state builder, the scheduler and the run
store read it instead of asking the graph again. A plan is frozen and describes
only the shape of the run: no rows, no stores, no executors.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stillhouse.core.dag import DAG, LoadGroups, RoutingLayout, load_stages, routing_layout

if TYPE_CHECKING:
    from stillhouse.core.routing import RoutingBatchFunction


class StepKind(enum.Enum):
    """How the engine feeds a step."""

    GENERATOR = "generator"  # produces rows from nothing, batch after batch
    GLOBAL = "global"  # gets all of its input rows in one batch
    NORMAL = "normal"  # gets input batches of `input_batch_size` rows


@dataclass(frozen=True)
class ExecutionPlan:
    """The shape of one run, compiled from the pipeline's DAG once.

    Attributes:
        order: Every step, in the DAG's deterministic topological order.
        stages: Load stages (`dag.load_stages`): steps loaded together, stage by stage.
        kinds: Each step's `StepKind`.
        predecessors, successors: Each step's neighbours, in insertion order.
        routing: `{routing step: its RoutingBatchFunction}` (the routing plan).
        regions: `{routing step: the steps in its branches}` up to the convergence step.
        convergence: `{routing step: the step where its branches rejoin}`.
        region_of: `{step: the routing step whose branches it is in, or None}`.
    """

    order: tuple[str, ...]
    stages: tuple[tuple[str, ...], ...]
    kinds: Mapping[str, StepKind]
    predecessors: Mapping[str, tuple[str, ...]]
    successors: Mapping[str, tuple[str, ...]]
    routing: Mapping[str, RoutingBatchFunction]
    regions: Mapping[str, tuple[str, ...]]
    convergence: Mapping[str, str]
    region_of: Mapping[str, str | None]

    @property
    def convergence_steps(self) -> frozenset[str]:
        return frozenset(self.convergence.values())

    @property
    def leaves(self) -> tuple[str, ...]:
        return tuple(name for name in self.order if not self.successors[name])

    def lineaged(self, name: str) -> bool:
        """Inputs of `name` arrive per lineage: it is in routed branches or rejoins them."""
        return self.region_of[name] is not None or name in self.convergence_steps

    def routed_to(self, source: str) -> tuple[str, ...]:
        """The steps a batch routed by `source` may reach: its region, then its convergence
        step (if its branches rejoin)."""
        after = (self.convergence[source],) if source in self.convergence else ()
        return self.regions[source] + after


def compile_plan(dag: DAG, load_groups: LoadGroups = None, layout: RoutingLayout | None = None) -> ExecutionPlan:
    """The `ExecutionPlan` of a validated `dag`; `layout` is what `validate_dag` returned
    (computed here when not given)."""
    layout = layout or routing_layout(dag)
    kinds = {name: _kind(dag, name) for name in layout.order}
    return ExecutionPlan(
        order=layout.order,
        stages=tuple(tuple(stage) for stage in load_stages(dag, load_groups)),
        kinds=kinds,
        predecessors={name: tuple(dag.predecessors(name)) for name in layout.order},
        successors={name: tuple(dag.successors(name)) for name in layout.order},
        routing=dict(dag.routing),
        regions=dict(layout.regions),
        convergence=dict(layout.convergence),
        region_of=dict(layout.context),
    )


def _kind(dag: DAG, name: str) -> StepKind:
    step = dag.get_step(name)
    if step.is_generator:
        return StepKind.GENERATOR
    return StepKind.GLOBAL if step.is_global else StepKind.NORMAL
