"""stillhouse.core: steps, the DAG, the Pipeline, the run engine and plugin hooks."""

from importlib.metadata import PackageNotFoundError, version

from stillhouse.core.decorator import step
from stillhouse.core.errors import StopRun, SuspendStep
from stillhouse.core.hookspecs import hookimpl
from stillhouse.core.limits import SharedLimit, shared_limit
from stillhouse.core.pipeline import Pipeline
from stillhouse.core.routing import RoutingBatchFunction, routing_batch_function, sample_n_steps
from stillhouse.core.runtime import RuntimeParameter
from stillhouse.core.step import GeneratorStep, GlobalStep, Step, StepResources, requirements
from stillhouse.core.steps.generators import make_generator_step
from stillhouse.core.typing import GeneratorStepOutput, StepInput, StepOutput

try:
    __version__ = version("stillhouse-core")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "GeneratorStep",
    "GeneratorStepOutput",
    "GlobalStep",
    "Pipeline",
    "RoutingBatchFunction",
    "RuntimeParameter",
    "SharedLimit",
    "Step",
    "StepInput",
    "StepOutput",
    "StepResources",
    "StopRun",
    "SuspendStep",
    "hookimpl",
    "requirements",
    "make_generator_step",
    "routing_batch_function",
    "sample_n_steps",
    "shared_limit",
    "step",
]
