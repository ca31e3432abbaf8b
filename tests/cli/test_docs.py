"""docs/cli.md covers every command and option; docs/plugins.md every hook, and its code runs."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import re
import types
from pathlib import Path

import pytest
from stillhouse_example_steps import Uppercase

from stillhouse.core import hookspecs
from stillhouse.core.cli import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOCUMENTED_GROUPS = ("pipeline", "plugins", "cache")  # ours; other plugins document their own


def _normal(text: str) -> str:
    return " ".join(text.split())


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _hookspecs() -> dict[str, types.FunctionType]:
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, f"{hookspecs.PROJECT}_spec")
    }


def test_cli_doc_has_a_section_for_every_command_with_all_its_options():
    doc = (DOCS / "cli.md").read_text()
    groups = _subcommands(build_parser())
    for group in DOCUMENTED_GROUPS:
        for command, parser in _subcommands(groups[group]).items():
            heading = f"## `stillhouse {group} {command}`"
            assert heading in doc, f"docs/cli.md has no section {heading!r}"
            section = doc.split(heading, 1)[1].split("\n## ", 1)[0]
            for action in parser._actions:
                for option in action.option_strings:
                    if option not in {"-h", "--help", "-y"}:
                        assert option in section, f"{heading}: {option} is not documented"
                if not action.option_strings and action.dest != "help":
                    assert action.metavar in section, f"{heading}: {action.metavar} is not documented"


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_every_hook_is_documented_with_its_docstring(name):
    doc = (DOCS / "plugins.md").read_text()
    function = _hookspecs()[name]
    heading = re.search(rf"^### `{name}\((.*?)\)`(.*)$", doc, re.MULTILINE)
    assert heading, f"docs/plugins.md has no '### `{name}(...)`' section"
    assert heading.group(1) == ", ".join(inspect.signature(function).parameters)
    first_result = getattr(function, f"{hookspecs.PROJECT}_spec")["firstresult"]
    assert ("(first result)" in heading.group(2)) == first_result
    assert _normal(inspect.getdoc(function)) in _normal(doc)


def test_plugins_doc_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "plugins.md").read_text(), re.DOTALL)
    assert len(blocks) == 5
    namespace: dict[str, object] = {"__name__": "docs_plugins"}
    for block in blocks[:3]:  # the Uppercase step, its plugin module, the ten-line plugin
        exec(compile(block, "docs/plugins.md", "exec"), namespace)

    # The doc shows the example package's step as it is.
    assert inspect.getsource(Uppercase) in blocks[0]
    upper = namespace["Uppercase"](columns=["t"])
    assert next(upper.process([{"t": "a"}, {"t": None}])) == [{"t": "A"}, {"t": None}]

    registered: list[type] = []
    namespace["register_steps"](register=registered.append)
    assert [cls.__name__ for cls in registered] == ["Reverse"]

    plugin = types.ModuleType("docs_plugin")  # what `import my_steps.plugin as plugin` gives
    plugin.register_steps = namespace["register_steps"]
    namespace["plugin"] = plugin
    exec(compile(blocks[3], "docs/plugins.md", "exec"), namespace)  # testing a plugin

    exec(compile(blocks[4], "docs/plugins.md", "exec"), namespace)  # adding CLI commands
    parser = argparse.ArgumentParser()
    namespace["register_cli"](subparsers=parser.add_subparsers())
    args = parser.parse_args(["hello", "world"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.handler(args) == 0
    assert out.getvalue() == "hello, world\n"


def test_example_package_readme_python_blocks_run():
    readme = DOCS.parent / "examples" / "plugin-steps" / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.DOTALL)
    assert len(blocks) == 2
    namespace: dict[str, object] = {"__name__": "docs_example_readme"}
    for block in blocks:
        exec(compile(block, str(readme), "exec"), namespace)
    registered: list[type] = []
    namespace["register_steps"](register=registered.append)
    assert registered == [Uppercase]
    assert namespace["pipeline"].dag.step_names == ["load_data_from_dicts_0", "uppercase_0"]


def test_docs_list_every_executor_of_this_install():
    from stillhouse.core import plugins

    executors = sorted(plugins.registry().executors)
    assert "ray" in executors
    cli_doc, plugins_doc = (DOCS / "cli.md").read_text(), (DOCS / "plugins.md").read_text()
    listed = re.search(r"Installed executors: (.*?)\. Pass", cli_doc).group(1)
    assert listed == ", ".join(repr(name) for name in executors)
    for name in executors:
        assert f"│ executor │ {name} " in cli_doc, f"cli.md's plugins list lacks {name!r}"
        assert f'`"{name}"`' in plugins_doc, f"plugins.md does not name executor {name!r}"


def test_readme_package_table_lists_every_distribution():
    import tomllib

    root = DOCS.parent
    readme = (root / "README.md").read_text()
    for pyproject in sorted(root.glob("packages/*/pyproject.toml")):
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
        assert f"| `{name}` |" in readme, f"README's package table lacks {name}"


@pytest.mark.timeout(120)
def test_the_quickstart_yaml_of_cli_md_is_made_by_the_command_it_shows(tmp_path, cli):
    doc = (DOCS / "cli.md").read_text()
    command = "uv run python examples/quickstart.py --save quickstart.yaml"
    assert f"$ {command}" in doc
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(DOCS.parent / "examples" / "quickstart.py"), "--save",
                           "quickstart.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    info = cli("pipeline", "info", "--config", str(tmp_path / "quickstart.yaml"))
    assert info.returncode == 0, info.stderr
    assert "Pipeline 'quickstart': 7 steps" in info.stdout
