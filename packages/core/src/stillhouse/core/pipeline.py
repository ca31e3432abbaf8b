"""`Pipeline`: the DAG of steps a user builds, validates, saves and runs."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from contextvars import Token
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from packaging.requirements import InvalidRequirement, Requirement

from stillhouse.core import _context, serialization
from stillhouse.core.dag import DAG, LoadGroups, validate_dag
from stillhouse.core.errors import (
    DatasetArgumentError,
    MissingRequirementsError,
    PipelineValidationError,
    RuntimeParameterError,
)

if TYPE_CHECKING:
    from stillhouse.core.routing import RoutingBatchFunction
    from stillhouse.core.step import _Step

logger = logging.getLogger("stillhouse.pipeline")

CACHE_DIR_ENV = "STILLHOUSE_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/stillhouse/pipelines"


class Pipeline:
    """A DAG of steps. Steps created inside `with Pipeline(...) as p:` join `p`.

    Attributes:
        name: Names the pipeline's cache folder (default "pipeline").
        cache_dir: Root of the cache (else $STILLHOUSE_CACHE_DIR, else ~/.cache/stillhouse/pipelines).
        enable_metadata: Keep the `stillhouse_metadata` column (per-row errors) in results.
        requirements: pip requirement strings checked before the run starts.
        executor: The registered executor that runs the steps ("mp", "threaded", "sync", ...).
    """

    def __init__(
        self,
        name: str | None = None,
        description: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        enable_metadata: bool = False,
        requirements: Sequence[str] | None = None,
        executor: str = "mp",
        **executor_options: Any,
    ) -> None:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise PipelineValidationError(
                f"Pipeline name {name!r} may only contain letters, digits, '_', '-' and '.': "
                "it names a folder of the cache."
            )
        self.name = name or "pipeline"
        self.description = description
        self._cache_dir = cache_dir
        self.enable_metadata = enable_metadata
        self.requirements = list(requirements or [])
        self.executor = executor
        self.executor_options = executor_options
        self.dag = DAG()
        self._token: Token[Any] | None = None
        self._stop_requested = 0
        self._run_dir: str | None = None
        self.last_run_summary: list[dict[str, Any]] = []

    # -- building --------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._token = _context.current_pipeline.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _context.current_pipeline.reset(self._token)
            self._token = None

    def _add_step(self, step: _Step) -> None:
        self.dag.add_step(step)

    def _add_edge(self, source: str, target: str) -> None:
        self.dag.add_edge(source, target)

    def _set_routing(self, source: str, routing: RoutingBatchFunction) -> None:
        self.dag.set_routing(source, routing)

    # -- identity ----------------------------------------------------------------------

    @property
    def cache_dir(self) -> str:
        chosen = self._cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
        text = str(chosen)
        return text if "://" in text else str(Path(text).expanduser())

    @property
    def signature(self) -> str:
        """Hash of step names, connections and routing (not of step fields)."""
        dag = self.dag
        payload = {
            "steps": sorted(dag.step_names),
            "edges": sorted([list(edge) for edge in dag.graph.edges]),
            "routing": {
                source: {k: v for k, v in routing.dump().items() if k != "description"}
                for source, routing in sorted(dag.routing.items())
            },
        }
        encoded = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha1(encoded).hexdigest()

    def get_runtime_parameters_info(self) -> dict[str, list[dict[str, Any]]]:
        return {name: self.dag.get_step(name).get_runtime_parameters_info() for name in self.dag.step_names}

    # -- serialization -----------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return serialization.pipeline_to_dict(self)

    def save(self, path: str | os.PathLike[str], format: str = "yaml") -> None:
        text = serialization.dumps(self.dump(), format)
        Path(path).write_text(text, encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pipeline:
        return serialization.pipeline_from_dict(data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Pipeline:
        return cls.from_dict(serialization.loads(serialization.read_text(path), str(path)))

    from_json = from_yaml  # JSON is YAML; the same safe loader reads both

    # -- validation --------------------------------------------------------------------

    def apply_parameters(self, parameters: dict[str, dict[str, Any]] | None) -> None:
        """Set runtime parameters; unknown steps or fields are warnings (as in distilabel)."""
        for step_name, values in (parameters or {}).items():
            if step_name not in self.dag.graph:
                warnings.warn(
                    f"run(parameters=...) names step {step_name!r}, which is not in pipeline "
                    f"{self.name!r} (steps: {', '.join(self.dag.step_names)}); it was ignored.",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            if not isinstance(values, dict):
                raise RuntimeParameterError(
                    f"Step {step_name!r}: parameters must be a dict of {{field: value}}, got "
                    f"{type(values).__name__}."
                )
            try:
                messages = self.dag.get_step(step_name).set_runtime_parameters(values)
            except ValueError as exc:
                raise RuntimeParameterError(
                    f"Step {step_name!r}: invalid runtime parameter value: {exc}"
                ) from exc
            for message in messages:
                warnings.warn(message, UserWarning, stacklevel=3)

    def validate(self) -> None:
        """Every check that can run before a worker starts (SPEC.md §5)."""
        validate_dag(self.dag)
        for name in self.dag.step_names:
            missing = self.dag.get_step(name).missing_runtime_parameters()
            if missing:
                raise RuntimeParameterError(
                    f"Step {name!r} is missing required runtime parameter(s) "
                    f"{', '.join(missing)}. Set them in the step's constructor or with "
                    f"run(parameters={{{name!r}: {{{missing[0]!r}: ...}}}})."
                )
        self._check_requirements()

    def _check_requirements(self) -> None:
        wanted = list(self.requirements)
        for name in self.dag.step_names:
            wanted.extend(getattr(self.dag.get_step(name), "requirements", None) or [])
        missing = [req for req in dict.fromkeys(wanted) if not _requirement_met(req)]
        if missing:
            raise MissingRequirementsError(
                f"Pipeline {self.name!r} needs packages that are not installed:\n"
                + "\n".join(missing)
                + "\nInstall them, e.g. `pip install " + " ".join(repr(m) for m in missing) + "`."
            )

    # -- running -----------------------------------------------------------------------

    def run(
        self,
        parameters: dict[str, dict[str, Any]] | None = None,
        use_cache: bool = True,
        storage_parameters: dict[str, Any] | None = None,
        use_fs_to_pass_data: bool = False,
        dataset: Any = None,
        logging_handlers: list[logging.Handler] | None = None,
        load_groups: LoadGroups = None,
        progress: bool | None = None,
        wait_for_suspended: bool = False,
    ) -> Any:
        """Validate, run every step and return the results (a Distiset).

        A run that ends with suspended steps (`SuspendStep`) raises `StepsSuspendedError`;
        `wait_for_suspended=True` waits each one's `retry_after` and sends it again instead."""
        from stillhouse.core.engine.run import run_pipeline

        self._attach_dataset(dataset)
        return run_pipeline(
            self,
            parameters=parameters,
            use_cache=use_cache,
            load_groups=load_groups,
            logging_handlers=logging_handlers,
            progress=progress,
            storage_parameters=storage_parameters,
            use_fs_to_pass_data=use_fs_to_pass_data,
            wait_for_suspended=wait_for_suspended,
        )

    def dry_run(
        self,
        parameters: dict[str, dict[str, Any]] | None = None,
        batch_size: int = 1,
        dataset: Any = None,
    ) -> Any:
        """One batch of `batch_size` rows through every step; the cache is not touched."""
        from stillhouse.core.engine.run import run_pipeline

        self._attach_dataset(dataset)
        return run_pipeline(self, parameters=parameters, use_cache=False, dry_run_rows=batch_size)

    def stop(self) -> None:
        """Ask a running `run()` to stop gracefully (as a first Ctrl+C does). Thread-safe."""
        self._stop_requested += 1

    def _attach_dataset(self, dataset: Any) -> None:
        if dataset is None:
            return
        from stillhouse.core.steps import LoadDataFromDicts

        generators = [n for n in self.dag.step_names if self.dag.get_step(n).is_generator]
        if generators:
            raise DatasetArgumentError(
                f"run(dataset=...) was given, but pipeline {self.name!r} already has generator "
                f"step(s) {generators!r}. Remove `dataset=` or the generator step."
            )
        rows = _dataset_rows(dataset)
        roots = self.dag.roots
        with self:
            loader = LoadDataFromDicts(name="load_dataset", data=rows)
        for root in roots:
            loader.connect(self.dag.get_step(root))

    def draw(self, path: str | os.PathLike[str] = "pipeline.svg", top_to_bottom: bool = False,
             show_edge_labels: bool = True) -> Path:
        """Write a picture of the DAG (.svg, .png or .mmd), made locally."""
        from stillhouse.core.draw import draw_pipeline

        return draw_pipeline(self, Path(path), top_to_bottom=top_to_bottom,
                             show_edge_labels=show_edge_labels)

    def _repr_markdown_(self) -> str:
        from stillhouse.core.draw import mermaid

        return f"```mermaid\n{mermaid(self)}\n```"

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, steps={self.dag.step_names!r})"


def _dataset_rows(dataset: Any) -> list[dict[str, Any]]:
    if isinstance(dataset, list) and all(isinstance(row, dict) for row in dataset):
        return dataset
    if hasattr(dataset, "to_list") and hasattr(dataset, "column_names"):  # datasets.Dataset
        return dataset.to_list()
    if hasattr(dataset, "to_dict") and hasattr(dataset, "columns"):  # pandas.DataFrame
        return dataset.to_dict(orient="records")
    raise DatasetArgumentError(
        f"run(dataset=...) got a {type(dataset).__name__}; pass a list of dicts, a "
        "datasets.Dataset or a pandas.DataFrame."
    )


def _requirement_met(text: str) -> bool:
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise MissingRequirementsError(
            f"Requirement {text!r} is not a valid pip requirement: {exc}"
        ) from exc
    try:
        installed = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return not requirement.specifier or requirement.specifier.contains(installed, prereleases=True)
