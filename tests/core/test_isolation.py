"""Core stays light, plugins come from real distributions, signatures are stable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def python(code: str, *, env: dict[str, str] | None = None, path: Path | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in [path, ROOT] if p), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environment,
        timeout=90, cwd=ROOT,
    )


def test_importing_core_imports_no_heavy_or_sibling_package():
    done = python("""
        import sys
        import stillhouse.core, stillhouse.core.steps
        heavy = {"pyarrow", "datasets", "fsspec", "pandas", "ray"}
        print([m for m in sys.modules if m.split(".")[0] in heavy
               or m.startswith(("stillhouse.cache", "stillhouse.executors", "stillhouse.distiset", "stillhouse.ray"))])
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def make_distribution(root: Path, name: str, module_source: str) -> None:
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[stillhouse]\n{name} = {name}\n")


PLUGIN = """
    from stillhouse.core import Step, StepInput, hookimpl

    class Shout(Step):
        @property
        def inputs(self):
            return ["text"]

        @property
        def outputs(self):
            return ["shouted"]

        def process(self, inputs: StepInput):
            for row in inputs:
                row["shouted"] = row["text"].upper()
            yield inputs

    @hookimpl
    def register_steps(register):
        register(Shout)
"""


def test_a_plugin_distribution_step_resolves_by_name_from_yaml(tmp_path):
    pytest.importorskip("stillhouse.distiset", reason="reads the Distiset the run returns")
    make_distribution(tmp_path, "throwaway_steps", PLUGIN)
    config = tmp_path / "pipeline.yaml"
    config.write_text(textwrap.dedent("""
        pipeline:
          name: by-name
          executor: sync
          steps:
            - name: load
              step:
                name: load
                data: [{text: a}, {text: b}]
                type_info: {module: stillhouse.core.steps.generators, name: LoadDataFromDicts}
            - name: shout
              step: {name: shout, type_info: {name: Shout}}
          connections:
            - {from: load, to: [shout]}
            - {from: shout, to: []}
    """))
    done = python(f"""
        from stillhouse.core import Pipeline
        pipeline = Pipeline.from_yaml({str(config)!r})
        result = pipeline.run(use_cache=False, progress=False)
        print([row["shouted"] for row in result["default"]["train"]])
        print(type(pipeline.dag.get_step("shout")).__module__)
    """, path=tmp_path, env={"STILLHOUSE_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["['A', 'B']", "throwaway_steps"]


def test_a_broken_plugin_gives_a_clear_error_naming_it(tmp_path):
    make_distribution(tmp_path, "broken_plugin", "raise ImportError('missing native library')\n")
    done = python("""
        from stillhouse.core import plugins
        try:
            plugins.registry()
        except Exception as exc:
            print(type(exc).__name__, exc)
    """, path=tmp_path)
    assert "PluginError" in done.stdout
    assert "'broken_plugin'" in done.stdout and "missing native library" in done.stdout
    assert "STILLHOUSE_DISABLE_PLUGINS=broken_plugin" in done.stdout


def test_dump_load_dump_is_identical_and_signatures_are_stable_across_processes():
    pytest.importorskip("stillhouse.cache", reason="step signatures live in stillhouse-cache")
    code = """
        import json
        from stillhouse.cache import step_signatures
        from stillhouse.core import Pipeline
        from tests.support.crash_pipeline import build
        pipeline = build("/tmp/unused", "mp")
        again = Pipeline.from_dict(pipeline.dump())
        print(json.dumps({"same": again.dump() == pipeline.dump(), "pipeline": pipeline.signature,
                          "steps": step_signatures(pipeline.dag)}))
    """
    runs = [json.loads(python(code, env={"PYTHONHASHSEED": seed}).stdout) for seed in ("1", "2")]
    assert runs[0]["same"] and runs[1]["same"]
    assert runs[0]["pipeline"] == runs[1]["pipeline"]
    assert runs[0]["steps"] == runs[1]["steps"]
