"""The `stillhouse` command line: run and inspect pipeline files, list plugins.

Commands only parse arguments, call the library and print; anything a command
needs that Python users would need too belongs in the library, so the CLI and
`Pipeline.run()` never behave differently. Plugins add command groups through the
`register_cli` hook (stillhouse-cache adds `stillhouse cache ...`); the helpers
`add_param_option`, `load_pipeline` and `console` are public for them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

from stillhouse.core import plugins
from stillhouse.core.errors import (
    MissingPluginError,
    SerializationError,
    StillhouseError,
    UnknownExecutorError,
)
from stillhouse.core.secrets import dump_without_secrets

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from stillhouse.core.pipeline import Pipeline

DEBUG_FLAG = "--debug"
HINT = "hint: run with --debug to see the traceback"
# Errors a user can fix from the message alone: anything else is a bug and keeps its traceback.
USER_ERRORS = (StillhouseError, ValueError, FileNotFoundError)


# -- helpers shared with plugin command groups ------------------------------------------


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output would otherwise be cut to 80 columns, hiding names behind ellipses.
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    # No markup: step names, types ("Optional[int]") and values are printed as they are.
    return Console(stderr=stderr, highlight=False, markup=False, width=160 if wide else None)


def table(title: str, *columns: str) -> Table:
    """A rich table whose cells fold instead of being cut, so no name is ever hidden."""
    from rich.table import Table

    made = Table(title=title, title_justify="left")
    for column in columns:
        made.add_column(column, overflow="fold")
    return made


def add_param_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="STEP.FIELD=VALUE",
        help="set a runtime parameter (VALUE is read as YAML: 3, 0.5, true, [a, b]); "
        "STEP.FIELD.SUB=VALUE sets a nested one; repeat for more",
    )


def parse_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """`["double.input_batch_size=5", "s.resources.replicas=2"]` -> nested `run(parameters=)`."""
    parameters: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        path = key.strip().split(".")
        if not sep or len(path) < 2 or not all(path):
            raise ValueError(
                f"--param {item!r} is not STEP.FIELD=VALUE. Write e.g. "
                "--param my_step.input_batch_size=10."
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise ValueError(f"--param {item!r}: the value is not valid YAML ({first}).") from exc
        node = parameters
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # a later, deeper --param wins over an earlier scalar
            node = node[part]
        node[path[-1]] = value
    return parameters


def load_pipeline(config: str) -> Pipeline:
    """`Pipeline.from_yaml` for a local path or an fsspec URL, with a clear missing-file error."""
    from stillhouse.core.pipeline import Pipeline

    if "://" not in config or config.startswith("file://"):
        path = Path(config.removeprefix("file://"))
        if not path.is_file():
            what = "is a directory, not a pipeline file" if path.is_dir() else "does not exist"
            raise FileNotFoundError(
                f"The pipeline file {config!r} {what}. Pass the path of a pipeline.yaml "
                "written by Pipeline.save() (or by a run, in its cache folder)."
            )
    try:
        return Pipeline.from_yaml(config)
    except UnicodeDecodeError as exc:
        raise SerializationError(
            f"The pipeline file {config!r} is not UTF-8 text (byte {exc.start}: {exc.reason}). "
            "Pass a pipeline.yaml written by Pipeline.save() (or by a run, in its cache folder)."
        ) from None
    except OSError as exc:
        if "://" not in config or config.startswith("file://"):
            raise
        raise FileNotFoundError(
            f"The pipeline file {config!r} could not be read ({type(exc).__name__}: {exc}). Check "
            "the URL and that its server is reachable, or download the file and pass its path."
        ) from exc


def check_executor(name: str, origin: str) -> None:
    try:
        plugins.executor_class(name)
    except UnknownExecutorError:
        installed = ", ".join(repr(n) for n in sorted(plugins.registry(hooks=("register_executors",)).executors)) or "none"
        raise UnknownExecutorError(
            f"Unknown executor {name!r} ({origin}). Installed executors: {installed}. "
            "Pass one of them with --executor NAME, or install a plugin that provides it."
        ) from None


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


# -- pipeline run / info -----------------------------------------------------------------


def _check_repo_id(repo_id: str) -> None:
    """Refuse, before anything runs, a `--repo-id` the push would refuse after the run: an
    id the Hub does not accept, or no token to push with (the token is never shown)."""
    try:  # only when pushing: the CLI starts without it, and core does not depend on it
        from huggingface_hub import get_token
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise ValueError(
            "--repo-id needs a Distiset result to push; install stillhouse-distiset to push."
        ) from None

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        reason = str(exc).replace(f": {repo_id!r}", "").replace(f": '{repo_id}'", "").rstrip(".")
        raise ValueError(
            f"--repo-id {repo_id!r} is not a Hub dataset repository id ({reason}). Pass "
            "USER_OR_ORG/NAME, e.g. --repo-id my-user/my-dataset."
        ) from None
    if not (os.environ.get("HF_TOKEN") or get_token()):
        raise ValueError(
            f"--repo-id {repo_id!r} needs a Hugging Face token to push, and none was found. "
            "Set HF_TOKEN or run `hf auth login`, then run the command again."
        )


def _cmd_pipeline_run(args: argparse.Namespace) -> int:
    if args.repo_id is not None:
        _check_repo_id(args.repo_id)  # before the run, not after it
    if args.private and not args.repo_id:
        raise ValueError("--private only applies to a push: add --repo-id USER/NAME.")
    pipeline = load_pipeline(args.config)
    parameters = parse_params(args.param)
    if args.executor:
        pipeline.executor = args.executor
    check_executor(
        pipeline.executor, "from --executor" if args.executor else f"named in {args.config}"
    )
    if args.cache_dir:
        pipeline.cache_dir = args.cache_dir
    result = pipeline.run(parameters=parameters or None, use_cache=not args.ignore_cache)
    _print_results(pipeline, result)
    if args.repo_id:
        if not hasattr(result, "push_to_hub"):
            raise MissingPluginError(
                "--repo-id needs a Distiset result; install stillhouse-distiset to push."
            )
        _push(result, args.repo_id, args.private, pipeline)
    return 0


def _push(result: Any, repo_id: str, private: bool, pipeline: Pipeline) -> None:
    """Push the run's results; a failure says the results are safe and how to push again."""
    try:
        result.push_to_hub(repo_id, private=private)
    except Exception as exc:
        from stillhouse.core.engine.logs import environment_secrets, mask_secrets

        reason = mask_secrets(str(exc).strip().splitlines()[0] if str(exc).strip() else "", environment_secrets())
        where = f" (its cache folder: {pipeline.run_dir})" if getattr(pipeline, "run_dir", None) else ""
        raise StillhouseError(
            f"The run finished{where}, but pushing its results to {repo_id!r} failed: "
            f"{type(exc).__name__}: {reason}. Check the repository id, the token's rights and "
            "the Hub's address, then run the same command again: the run is answered from the "
            "cache and only the push is done again."
        ) from exc
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    console().print(f"Pushed to {endpoint}/datasets/{repo_id}")


def _row_counts(result: Any) -> dict[str, int]:
    if hasattr(result, "row_counts"):  # a Distiset: {leaf: {split: rows}}
        return {leaf: sum(splits.values()) for leaf, splits in result.row_counts().items()}
    if isinstance(result, dict):  # no distiset plugin: {leaf: [rows]}
        return {leaf: len(rows) for leaf, rows in result.items()}
    return {}


def _print_results(pipeline: Pipeline, result: Any) -> None:
    out = console()
    out.print(f"Results of pipeline {pipeline.name!r}:")
    for leaf, rows in _row_counts(result).items():
        out.print(f"  {leaf}: {rows} rows", soft_wrap=True)
    summary = pipeline.last_run_summary
    failed = sum(row.get("failed_batches", 0) for row in summary)
    reused = sum(row.get("failed_batches", 0) for row in summary if row.get("status", "").startswith("cached"))
    if failed:  # a cached step's failed batches are reused with its results, as they are
        when = " in an earlier run whose results were reused" if reused == failed else ""
        out.print(f"{failed} batch(es) failed{when}; their rows have None outputs (see pipeline.log).")
    if pipeline.run_dir:
        out.print(f"Cache: {pipeline.run_dir}", soft_wrap=True)


def _cmd_pipeline_info(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.config)
    parameters = parse_params(args.param)
    check_executor(pipeline.executor, f"named in {args.config}")  # as `run` does
    if parameters:
        pipeline.apply_parameters(parameters)
    dag, out = pipeline.dag, console()
    out.print(f"Pipeline {pipeline.name!r}: {len(dag.step_names)} steps, executor "
              f"{pipeline.executor!r}, signature {pipeline.signature[:12]}", soft_wrap=True)
    if pipeline.description:
        out.print(pipeline.description)

    steps = table("Steps", "name", "class", "kind", "batch size", "replicas")
    for name in dag.topological_order():
        step = dag.get_step(name)
        kind = "generator" if step.is_generator else "global" if step.is_global else "normal"
        size = getattr(step, "batch_size" if step.is_generator else "input_batch_size", None)
        label = "batch_size" if step.is_generator else "input_batch_size"
        size_text = "all rows" if step.is_global else f"{size} ({label})"
        steps.add_row(name, type(step).__name__, kind, size_text, str(step.resources.replicas))
    out.print(steps)

    connections = table("Connections", "from", "to", "routing")
    for name in dag.topological_order():
        successors = dag.successors(name)
        if not successors:
            continue
        routing = dag.routing.get(name)
        connections.add_row(name, ", ".join(successors), _routing_label(routing))
    out.print(connections)

    params = table("Runtime parameters", "step", "parameter", "type", "default", "value",
                   "optional", "description")
    info = pipeline.get_runtime_parameters_info()
    described: set[tuple[str, str]] = set()  # every step has resources.*: say it once
    for name in dag.topological_order():
        entries = list(_flatten_info(info.get(name, [])))
        step = dag.get_step(name)
        for i, entry in enumerate(entries):
            description = entry.get("description", "")
            key = (entry["name"], description)
            if description and key in described:
                description = "(as above)"
            described.add(key)
            params.add_row(
                name if i == 0 else "",
                entry["name"],
                _short_type(entry.get("type", "?")),
                _plain(entry.get("default")),
                _plain(_current(step, entry["name"])),
                "yes" if entry.get("optional") else "no",
                description,
                end_section=i == len(entries) - 1,
            )
    out.print(params)
    return 0


def _routing_label(routing: Any) -> str:
    if routing is None:
        return ""
    kwargs = routing.dump()["type_info"].get("kwargs") or {}
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{routing.name}({args})" if kwargs else routing.name


def _flatten_info(entries: list[dict[str, Any]], prefix: str = ""):
    for entry in entries:
        nested = entry.get("runtime_parameters_info")
        if isinstance(nested, dict):  # a list of models: {"0": [...], "1": [...]}
            for index, items in nested.items():
                yield from _flatten_info(items, f"{prefix}{entry['name']}.{index}.")
        elif nested is not None:
            yield from _flatten_info(nested, f"{prefix}{entry['name']}.")
        else:
            yield {**entry, "name": f"{prefix}{entry['name']}"}


def _short_type(name: str) -> str:
    # `Annotated[int, Gt(gt=0)]` is pydantic's spelling of PositiveInt: show the base type.
    return re.sub(r"Annotated\[([\w.]+), [^\[\]]*\]", r"\1", name)


def _current(step: Any, dotted: str) -> Any:
    value = step
    for part in dotted.split("."):
        value = getattr(value, part, None)
    if hasattr(value, "get_secret_value"):
        return "***"  # a SecretStr: never print it
    return dump_without_secrets(value) if isinstance(value, BaseModel) else value


# -- plugins list ------------------------------------------------------------------------


def _cmd_plugins_list(args: argparse.Namespace) -> int:
    out, manager = console(), plugins.plugin_manager()
    origins, found = plugins.plugin_origins(), plugins.registry()
    loaded = table("Plugins", "plugin", "distribution (module)", "hooks")
    for name, plugin in manager.list_name_plugin():
        hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
        loaded.add_row(name, origins.get(name, "registered in code"), ", ".join(hooks))
    out.print(loaded)

    registered = table("Registered executors and steps", "kind", "name", "class", "plugin")
    for kind, items in (("executor", found.executors), ("step", found.steps)):
        for name, cls in sorted(items.items()):
            registered.add_row(kind, name, f"{cls.__module__}.{cls.__qualname__}",
                               found.sources.get(f"{kind}:{name}", "?"))
    out.print(registered)
    return 0


# -- the parser and main -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from stillhouse.core import __version__

    parser = argparse.ArgumentParser(
        prog="stillhouse", description="Run and inspect stillhouse dataset pipelines."
    )
    parser.add_argument("--version", action="version", version=f"stillhouse {__version__}")
    # Listed for --help only: main() removes the flag from argv wherever it appears, so
    # command groups added by plugins accept it too.
    debug_help = "show the full traceback of an error (accepted anywhere)"
    parser.add_argument(DEBUG_FLAG, action="store_true", help=debug_help)
    groups = parser.add_subparsers(title="commands", dest="group", metavar="COMMAND")
    groups.required = True

    pipeline = groups.add_parser("pipeline", help="run or describe a pipeline file")
    pipeline_commands = pipeline.add_subparsers(dest="command", metavar="COMMAND")
    pipeline_commands.required = True

    run = pipeline_commands.add_parser("run", help="run a pipeline file and print its results")
    run.add_argument("--config", required=True, metavar="PATH_OR_URL",
                     help="pipeline.yaml (local path or fsspec URL)")
    add_param_option(run)
    run.add_argument("--ignore-cache", action="store_true",
                     help="recompute every step (run(use_cache=False))")
    run.add_argument("--executor", metavar="NAME", help="override the executor of the file")
    run.add_argument("--cache-dir", metavar="DIR", help="cache root (default: $STILLHOUSE_CACHE_DIR "
                     "or ~/.cache/stillhouse/pipelines)")
    run.add_argument("--repo-id", metavar="ID", help="push the Distiset to this Hub dataset repo")
    run.add_argument("--private", action="store_true", help="create the Hub repo as private")
    run.add_argument(DEBUG_FLAG, action="store_true", help=debug_help)
    run.set_defaults(handler=_cmd_pipeline_run)

    info = pipeline_commands.add_parser(
        "info", help="show steps, connections and runtime parameters"
    )
    info.add_argument("--config", required=True, metavar="PATH_OR_URL",
                      help="pipeline.yaml (local path or fsspec URL)")
    add_param_option(info)
    info.add_argument(DEBUG_FLAG, action="store_true", help=debug_help)
    info.set_defaults(handler=_cmd_pipeline_info)

    plugin_group = groups.add_parser("plugins", help="what the installed plugins provide")
    plugin_commands = plugin_group.add_subparsers(dest="command", metavar="COMMAND")
    plugin_commands.required = True
    listing = plugin_commands.add_parser("list", help="loaded plugins and what they registered")
    listing.add_argument(DEBUG_FLAG, action="store_true", help=debug_help)
    listing.set_defaults(handler=_cmd_plugins_list)

    plugins.plugin_manager().hook.register_cli(subparsers=groups)
    return parser


def _one_line(exc: BaseException, args: argparse.Namespace | None = None) -> str:
    """The first line of the message; pydantic's detail lines are folded into it."""
    if isinstance(exc, KeyboardInterrupt):
        if getattr(args, "ignore_cache", False):  # the same command would start over
            return ("interrupted. Finished work is cached: run the command again without "
                    "--ignore-cache to resume.")
        return "interrupted. Finished work is cached: run the same command again to resume."
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename:
        text = f"{exc.strerror}: {exc.filename!r}"
    elif isinstance(exc, FileNotFoundError) and " " not in text:  # fsspec: just the path
        text = f"No such file: {text!r}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    validation = _validation_error(exc)
    if validation is not None and re.search(r"validation errors? for \w+$", first):
        details = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in validation.errors()[:3]
        )
        first = f"{first}: {details}"
    return first


def _validation_error(exc: BaseException) -> Any:
    from pydantic import ValidationError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ValidationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _show_warning(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    args: argparse.Namespace | None = None
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # "warning: ..." lines, not file:line noise
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            handler = getattr(args, "handler", None)
            if handler is None:  # a plugin group that set no handler
                parser.print_help(sys.stderr)
                return 2
            return int(handler(args) or 0)
        except (*USER_ERRORS, KeyboardInterrupt) as exc:
            if debug:
                traceback.print_exc()
            print(f"error: {_one_line(exc, args)}", file=sys.stderr)
            if not debug:
                print(HINT, file=sys.stderr)
            return 130 if isinstance(exc, KeyboardInterrupt) else 1


if __name__ == "__main__":
    sys.exit(main())
