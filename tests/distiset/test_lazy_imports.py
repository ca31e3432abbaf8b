"""Plugin loading and `run()` stay cheap: `datasets`, `openai` and `datasketch` are
imported when they are used (issue 20: startup), each checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("datasets", "openai", "datasketch", "scipy", "pandas", "upath")


def _fresh(code: str, tmp_path) -> dict:
    """Run `code` in a new interpreter; it prints one JSON line, returned here."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "STILLHOUSE_PROGRESS": "0"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_the_plugins_imports_no_heavy_module(tmp_path):
    found = _fresh(
        f"""
        import json, sys
        from stillhouse.core import plugins
        registry = plugins.registry()
        print(json.dumps({{
            "steps": sorted(registry.steps),
            "executors": sorted(registry.executors),
            "heavy": [m for m in {HEAVY!r} if m in sys.modules],
        }}))
        """,
        tmp_path,
    )
    assert found["heavy"] == []
    # ... and the classes are still registered.
    assert {"TextGeneration", "ChatGeneration", "MinHashDedup", "LoadDataFromHub"} <= set(found["steps"])
    assert {"mp", "threaded"} <= set(found["executors"])


def test_run_returns_a_distiset_read_on_first_use(tmp_path):
    found = _fresh(
        f"""
        import json, sys
        from stillhouse.core import Pipeline
        from stillhouse.core.steps import KeepColumns, LoadDataFromDicts

        if __name__ == "__main__":
            with Pipeline(name="lazy", cache_dir={str(tmp_path / "cache")!r}, executor="threaded") as pipeline:
                load = LoadDataFromDicts(data=[{{"a": i}} for i in range(5)])
                keep = KeepColumns(columns=["a"])
                load >> keep
            distiset = pipeline.run()
            # pandas too: pyarrow imports it on its first conversion of Python values,
            # which the writer and the checkpoints avoid for plain columns.
            before = [m for m in ("datasets", "pandas") if m in sys.modules]
            keys = list(distiset)
            rows = list(distiset["default"]["train"]["a"])
            print(json.dumps({{"before": before, "keys": keys, "rows": rows,
                               "after": "datasets" in sys.modules}}))
        """,
        tmp_path,
    )
    assert found == {"before": [], "keys": ["default"], "rows": [0, 1, 2, 3, 4], "after": True}


STEP_MODULES = (
    "stillhouse.steps.hub", "stillhouse.steps.disk", "stillhouse.steps.filesystem",
    "stillhouse.steps.sampler", "stillhouse.steps.minhash", "stillhouse.llms.tasks",
    "stillhouse.llms.openai_llm",
)


def test_a_run_imports_no_plugins_step_classes(tmp_path):
    """A run loads every plugin to find its executor; the step classes the LLM and data
    packages register are imported only when a pipeline file names one (issue 20: their
    pydantic classes cost a run about 25 ms to build)."""
    found = _fresh(
        f"""
        import json, sys
        from stillhouse.core import Pipeline, plugins
        from stillhouse.core.steps import LoadDataFromDicts

        if __name__ == "__main__":
            with Pipeline(name="lazy-steps", cache_dir={str(tmp_path / "cache")!r}, executor="threaded") as pipeline:
                LoadDataFromDicts(data=[{{"a": 1}}])
            pipeline.run()
            during = [m for m in {STEP_MODULES!r} if m in sys.modules]
            registered = sorted(plugins.registry().steps)
            import stillhouse.llms, stillhouse.steps
            print(json.dumps({{
                "during": during, "registered": registered,
                "steps": [c.__name__ for c in stillhouse.steps.STEPS],
                "llms": stillhouse.llms.OpenAILLM.__module__,
                "missing": hasattr(stillhouse.steps, "NoSuchStep"),
            }}))
        """,
        tmp_path,
    )
    assert found["during"] == []
    assert {"TextGeneration", "ChatGeneration", "MinHashDedup", "LoadDataFromDisk"} <= set(found["registered"])
    assert found["steps"] == ["LoadDataFromHub", "LoadDataFromDisk", "LoadDataFromFileSystem", "DataSampler", "MinHashDedup"]
    assert found["llms"] == "stillhouse.llms.openai_llm"
    assert found["missing"] is False


def test_a_deferred_distiset_reads_its_leaves_once_before_any_value_is_seen():
    import copy
    import pickle

    from stillhouse.distiset import Distiset

    reads = []

    def load() -> dict:
        reads.append(1)
        return {"a": {"train": [1, 2]}, "b": {"train": [3]}}

    def fresh() -> Distiset:
        return Distiset.deferred(["a", "b"], load)

    distiset = fresh()
    assert (list(distiset), len(distiset), "a" in distiset, reads) == (["a", "b"], 2, True, [])
    assert distiset["a"] == {"train": [1, 2]} and reads == [1]
    assert distiset["b"] == {"train": [3]} and reads == [1]  # once
    for view in (dict, lambda d: {**d}, lambda d: dict(d.items()), lambda d: list(d.values()),
                 lambda d: pickle.loads(pickle.dumps(d)), copy.deepcopy, lambda d: d.copy()):
        value = view(fresh())
        assert "not read yet" not in repr(value)
        assert value == {"a": {"train": [1, 2]}, "b": {"train": [3]}} or value == [{"train": [1, 2]}, {"train": [3]}]
    assert fresh() == fresh() and fresh().get("b") == {"train": [3]}


def test_a_deferred_distiset_whose_read_fails_raises_on_each_access():
    from stillhouse.distiset import Distiset

    def load() -> dict:
        raise OSError("damaged")

    distiset = Distiset.deferred(["a"], load)
    for _ in range(2):
        with pytest.raises(OSError, match="damaged"):
            distiset["a"]
