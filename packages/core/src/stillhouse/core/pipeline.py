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
from pydantic import ValidationError

from stillhouse.core import _context, _references, serialization
from stillhouse.core.dag import DAG, LoadGroups, load_stages, stages_last_steps, validate_dag
from stillhouse.core.errors import (
    DatasetArgumentError,
    MissingRequirementsError,
    PipelineValidationError,
    RuntimeParameterError,
)
from stillhouse.core.secrets import describe_validation_error
from stillhouse.core.step import MAX_NAME_BYTES

if TYPE_CHECKING:
    from stillhouse.core.engine.context import RunContext
    from stillhouse.core.engine.plan import ExecutionPlan
    from stillhouse.core.routing import RoutingBatchFunction
    from stillhouse.core.step import _Step

logger = logging.getLogger("stillhouse.pipeline")

CACHE_DIR_ENV = "STILLHOUSE_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/stillhouse/pipelines"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


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
        name = name or None  # Pipeline(name="") is unnamed, as in distilabel
        self.name = name or "pipeline"
        self.description = description
        self._cache_dir = cache_dir
        self.enable_metadata = enable_metadata
        self._requirements: list[str] = []
        self._warned_requirements: set[tuple[str, str]] = set()  # steps' invalid ones, named once
        self.requirements = list(requirements or [])
        self.executor = executor
        self.executor_options = executor_options
        self.dag = DAG()
        self._tokens: list[Token[Any]] = []  # one per `with` block entered, innermost last
        self._dataset_loader: _Step | None = None  # the generator `run(dataset=)` made
        self._stop_requested = 0
        self._run_context: RunContext | None = None  # set by the engine when a run starts
        self.last_run_summary: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        """Names the pipeline's cache folder: a plain path component (checked when set)."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        check_pipeline_name(value)
        self._name = value

    # -- building --------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._tokens.append(_context.current_pipeline.set(self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        # A stack: `run(dataset=)` inside the user's `with` block enters it again, and
        # leaving that inner block must not end the outer one's (nor leave it current).
        if self._tokens:
            _context.current_pipeline.reset(self._tokens.pop())

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

    @cache_dir.setter
    def cache_dir(self, value: str | os.PathLike[str] | None) -> None:
        """Set the cache root (None: $STILLHOUSE_CACHE_DIR, else the default)."""
        self._cache_dir = value

    @property
    def run_context(self) -> RunContext | None:
        """The `RunContext` of the current or last run, None before the first run."""
        return self._run_context

    @property
    def run_dir(self) -> str | None:
        """The cache folder (a path or URL) of the current or last run; None before a run,
        and after a dry run or a run without a run store."""
        return self._run_context.run_dir if self._run_context is not None else None

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

    @property
    def aggregated_steps_signature(self) -> str:
        """Hash of every step's `signature`, in the order the steps were added."""
        signatures = "".join(self.dag.get_step(name).signature for name in self.dag.step_names)
        return hashlib.sha1(signatures.encode()).hexdigest()

    def get_load_stages(self, load_groups: LoadGroups = None) -> tuple[list[list[str]], list[list[str]]]:
        """`(stages, last steps of each stage)`, as distilabel returns them: the steps
        loaded together, stage by stage, and the steps of each stage nothing in it follows."""
        stages = load_stages(self.dag, load_groups)
        return stages, stages_last_steps(self.dag, stages)

    # -- requirements ------------------------------------------------------------------

    @property
    def requirements(self) -> list[str]:
        """The pipeline's and its steps' pip requirements, deduplicated and sorted."""
        wanted = set(self._requirements)
        for name in self.dag.step_names:
            step = self.dag.get_step(name)
            # Read at every validation and save: a step's bad requirement is named once.
            texts = getattr(step, "requirements", None) or []
            wanted.update(_valid_requirements(texts, name, self._warned_requirements))
        return sorted(wanted)

    @requirements.setter
    def requirements(self, values: Sequence[str] | str) -> None:
        """Add requirements; invalid ones are dropped with a warning (as in distilabel)."""
        values = [values] if isinstance(values, str) else list(values)
        self._requirements = sorted(set(self._requirements) | set(_valid_requirements(values)))

    def requirements_to_install(self) -> list[str]:
        """The requirements that are missing or installed at a version they exclude."""
        return [req for req in self.requirements if not _requirement_met(req)]

    def get_runtime_parameters_info(self) -> dict[str, list[dict[str, Any]]]:
        return {name: self.dag.get_step(name).get_runtime_parameters_info() for name in self.dag.step_names}

    # -- serialization -----------------------------------------------------------------

    def dump(self, inline_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The pipeline as plain data; `requirements` is also a top-level key, as in
        distilabel. Inline rows (`LoadDataFromDicts(data=...)`) are in it, unless
        `inline_dir` is given: then they are written there once, as files named by their
        hash, and referenced (see `stillhouse.core.inline_data`)."""
        return {**serialization.pipeline_to_dict(self, inline_dir), "requirements": self.requirements}

    def save(self, path: str | os.PathLike[str], format: str = "yaml") -> None:
        """Write the pipeline file; inline rows go to `inline_data/` beside it, and steps
        defined in scripts are referenced relative to it."""
        data = self.dump(inline_dir=Path(path).parent)
        _references.relativize_files(data, Path(path).parent)  # scripts beside the file
        Path(path).write_text(serialization.dumps(data, format), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: str | os.PathLike[str] | None = None) -> Self:
        """Rebuild a pipeline (of this class, for a subclass) from `dump()`'s dict; `base`:
        the folder that inline-data references in `data` are relative to."""
        pipeline = serialization.pipeline_from_dict(data, base, pipeline_cls=cls)
        pipeline.requirements = data.get("requirements") or []
        return pipeline

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Self:
        """Load a pipeline file (local path or fsspec URL) with the inline data beside it.

        Scripts the file names by `file:` are found beside a local file; a file read from
        a URL that names one is refused before anything is imported."""
        data = serialization.loads(serialization.read_text(path), str(path))
        if "://" not in str(path) or str(path).startswith("file://"):
            _references.absolutize_files(data, Path(str(path).removeprefix("file://")).parent)
        else:  # no folder beside it: `file:` would be resolved against the current directory
            _references.refuse_remote_scripts(data, str(path))
        return cls.from_dict(data, base=str(path).rstrip("/").rpartition("/")[0] or ".")

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
            except ValidationError as exc:
                # Reasons only, and no cause attached: the value may be a secret.
                problem = describe_validation_error(exc)
            except ValueError as exc:
                problem = str(exc)
            else:
                problem = None
            if problem is not None:
                raise RuntimeParameterError(
                    f"Step {step_name!r}: invalid runtime parameter value: {problem}. "
                    f"Fix run(parameters={{{step_name!r}: ...}}) or the --param option."
                )
            for message in messages:
                warnings.warn(message, UserWarning, stacklevel=3)

    def validate(self, load_groups: LoadGroups = None) -> ExecutionPlan:
        """Every check that can run before a worker starts (SPEC.md §5); returns the
        execution plan the checks compiled (what a run of this pipeline executes)."""
        from stillhouse.core.engine.plan import compile_plan

        layout = validate_dag(self.dag)  # missing runtime parameters first: see validate_dag
        self._check_requirements()
        return compile_plan(self.dag, load_groups, layout)

    def _check_requirements(self) -> None:
        missing = self.requirements_to_install()
        if missing:
            raise MissingRequirementsError(
                f"Pipeline {self.name!r} needs packages that are not installed:\n"
                + "\n".join(f"{req} (needed by {self._wanted_by(req)})" for req in missing)
                + "\nInstall them, e.g. `pip install " + " ".join(repr(m) for m in missing) + "`."
            )

    def _wanted_by(self, requirement: str) -> str:
        """Who asked for `requirement`: the steps whose class declares it, and/or the pipeline."""
        steps = [name for name in self.dag.step_names
                 if requirement in _valid_requirements(getattr(self.dag.get_step(name), "requirements", None) or [],
                                                       name, self._warned_requirements)]
        who = [f"step {name!r}" for name in steps]
        if requirement in self._requirements:
            who.append("the pipeline's requirements=")
        return ", ".join(who) or "the pipeline"

    # -- running -----------------------------------------------------------------------

    def run(
        self,
        parameters: dict[str, dict[str, Any]] | None = None,
        use_cache: bool = True,
        storage_parameters: dict[str, Any] | None = None,
        use_fs_to_pass_data: bool = False,
        dataset: Any = None,
        logging_handlers: list[logging.Handler] | None = None,
        dataset_batch_size: int = 50,
        retry_failed: bool = False,
        load_groups: LoadGroups = None,
        progress: bool | None = None,
        wait_for_suspended: bool = False,
    ) -> Any:
        """Validate, run every step and return the results (a Distiset).

        `retry_failed=True` recomputes the stored batches that recorded a failure, and
        everything after them; each step keeps its store, so what its durable folder
        recorded (an LLM step's answered calls) is not paid again. Without it, a rerun
        returns what the first run returned, failures included.

        `dataset_batch_size`: the batch size of the generator step made from `dataset`.
        A run that ends with suspended steps (`SuspendStep`) raises `StepsSuspendedError`;
        `wait_for_suspended=True` waits each one's `retry_after` and sends it again instead."""
        from stillhouse.core.engine.run import run_pipeline

        self._attach_dataset(dataset, dataset_batch_size)
        try:
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
                retry_failed=retry_failed,
            )
        except KeyboardInterrupt:
            # The stop was clean and logged how to resume: the engine's frames would only
            # bury that message. Raised again here, from the caller's `run()` line.
            pass
        raise KeyboardInterrupt

    def dry_run(
        self,
        parameters: dict[str, dict[str, Any]] | None = None,
        batch_size: int = 1,
        dataset: Any = None,
    ) -> Any:
        """One batch of `batch_size` rows through every step; the cache is not touched.

        Every generator yields `batch_size` rows for it, as in distilabel, whatever its own
        `batch_size`; the engine runs a copy of it, so the step itself is left as it was."""
        from stillhouse.core.engine.run import run_pipeline

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PipelineValidationError(
                f"dry_run(batch_size={batch_size!r}): the batch size must be a positive whole "
                "number of rows, e.g. dry_run(batch_size=5)."
            )
        self._attach_dataset(dataset)
        return run_pipeline(self, parameters=parameters, use_cache=False, dry_run_rows=batch_size)

    def stop(self) -> None:
        """Ask a running `run()` to stop gracefully (as a first Ctrl+C does). Thread-safe."""
        self._stop_requested += 1

    def _attach_dataset(self, dataset: Any, batch_size: int = 50) -> None:
        """Make `dataset` the rows of the generator `load_dataset` before the roots. A
        later `run(dataset=)` gives that generator its new rows (a notebook runs again
        with another dataset, or after fixing a mapping); a run without `dataset=` keeps
        the last ones, as in distilabel."""
        if dataset is None:
            return
        from stillhouse.core.steps.generators import LoadDataFromDicts, dataset_rows

        loader = self._dataset_loader
        generators = [n for n in self.dag.step_names if self.dag.get_step(n).is_generator
                      and self.dag.get_step(n) is not loader]
        if generators:
            raise DatasetArgumentError(
                f"run(dataset=...) was given, but pipeline {self.name!r} already has generator "
                f"step(s) {generators!r}. Remove `dataset=` or the generator step."
            )
        rows = dataset_rows(dataset)
        if loader is not None:
            loader.data, loader.batch_size = rows, batch_size
            return
        roots = self.dag.roots
        with self:
            loader = LoadDataFromDicts(name="load_dataset", data=rows, batch_size=batch_size)
        for root in roots:
            loader.connect(self.dag.get_step(root))
        self._dataset_loader = loader

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


def check_pipeline_name(name: Any) -> None:
    """Raise unless `name` can name a folder of the cache: one plain path component.

    `.` and `..` would put the run into the cache root or its parent, and a name longer
    than `MAX_NAME_BYTES` would fail with ENAMETOOLONG only once the run starts.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in {".", ".."}:
        raise PipelineValidationError(
            f"Pipeline name {name!r} cannot name a cache folder: use letters, digits, '_', '-' "
            "and '.' only (not '.' or '..' alone), e.g. Pipeline(name='my-pipeline')."
        )
    if len(name.encode()) > MAX_NAME_BYTES:
        raise PipelineValidationError(
            f"Pipeline name {name[:40]!r}... is {len(name.encode())} bytes long; the limit is "
            f"{MAX_NAME_BYTES} bytes because it names a cache folder. Use a shorter name."
        )


def _valid_requirements(
    texts: Sequence[str], step: str | None = None, warned: set[tuple[str, str]] | None = None
) -> list[str]:
    """The valid pip requirements of `texts`, normalised; the others are dropped with a
    warning, once per `(owner, text)` in `warned` when given."""
    valid = []
    for text in texts:
        try:
            valid.append(str(Requirement(text)))
        except InvalidRequirement as exc:
            owner = f"step {step!r}" if step else "the pipeline"
            if warned is not None:
                if (owner, text) in warned:
                    continue
                warned.add((owner, text))
            logger.warning("Requirement %r of %s is not a valid pip requirement (%s); it is "
                           "ignored. Fix its spelling, e.g. 'package>=1.0'.", text, owner, exc)
    return valid


def _requirement_met(text: str) -> bool:
    requirement = Requirement(text)  # valid: every requirement went through _valid_requirements
    try:
        installed = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return not requirement.specifier or requirement.specifier.contains(installed, prereleases=True)
