"""What a step's cache signature covers beyond its own fields: the code of its class
wherever it lives, of the models its fields hold, of the routing function before it,
and the pipeline's `enable_metadata`; and that it is the same in every process."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from stillhouse.cache import step_signatures
from stillhouse.core import Pipeline, Step, StepInput, StepOutput
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import Tag

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`write(name, source)` makes (or edits, then reloads) module `name` in a folder on
    `sys.path`; the modules are forgotten after the test."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written: list[str] = []

    def write(name: str, source: str) -> Any:
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        written.append(name)
        return importlib.import_module(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)


def _signature_of(step_class: type[Step], **fields: Any) -> str:
    with Pipeline(name="code") as pipeline:
        step = step_class(name="step", **fields)
        LoadDataFromDicts(data=[{"x": 1}]) >> step
    return step_signatures(pipeline.dag)["step"]


STEP_SOURCE = """
    from stillhouse.core import Step

    class AddK(Step):
        def process(self, inputs):
            yield [{**row, "y": row["x"] + KVALUE} for row in inputs]
"""


@pytest.mark.parametrize("module", ["abcsteps", "pydantic_steps", "builtins_helpers", "stillhouse_core_steps_mine"])
def test_editing_a_step_in_a_module_named_like_a_library_changes_its_signature(modules, module) -> None:
    """Library modules are matched by whole name: a user's `abcsteps` is the user's code."""
    before = _signature_of(modules(module, STEP_SOURCE.replace("KVALUE", "1")).AddK)
    after = _signature_of(modules(module, STEP_SOURCE.replace("KVALUE", "1000")).AddK)
    assert before != after


def _no_source_step(k: int) -> type[Step]:
    """A step class defined where no source file exists (`python -c`, a notebook's exec)."""
    namespace: dict[str, Any] = {"Step": Step, "__name__": "nosource"}
    exec(compile(textwrap.dedent(f"""
        class AddK(Step):
            def process(self, inputs):
                yield [{{**row, "y": row["x"] + {k}, "tags": {{"a", "b", "c"}} & set(row)}} for row in inputs]

            def helper(self):
                return {k}
    """), "<string>", "exec"), namespace)
    return namespace["AddK"]


def test_a_step_without_a_source_file_is_signed_by_its_constants_and_every_method() -> None:
    one, same, other = (_signature_of(_no_source_step(k)) for k in (1, 1, 1000))
    assert one == same
    assert one != other  # the constant: before, only `process`'s opcodes were signed


class Config(BaseModel):
    base: int = 0


class ScaledConfig(Config):
    scale: int = 1


class UsesConfig(Step):
    config: Config = Config()

    def process(self, inputs: StepInput) -> StepOutput:
        yield [{**row, "y": row["x"] * getattr(self.config, "scale", 1)} for row in inputs]


def test_a_subclass_held_in_a_field_is_signed_with_its_own_fields() -> None:
    """The field is declared `Config`; what it holds is signed as what it is."""
    small = _signature_of(UsesConfig, config=ScaledConfig(scale=1))
    large = _signature_of(UsesConfig, config=ScaledConfig(scale=10))
    assert small != large


def test_swapping_a_held_models_class_or_editing_its_code_changes_the_signature(modules) -> None:
    source = """
        from pydantic import BaseModel

        class Shout(BaseModel):
            def say(self, text):
                return text.METHOD()

        class Whisper(Shout):
            pass
    """
    first = modules("held_models", source.replace("METHOD", "upper"))
    plain = _signature_of(UsesConfig, config=Config())
    shout = _signature_of(UsesAny, helper=first.Shout())
    assert shout != _signature_of(UsesAny, helper=first.Whisper())  # same fields, another class
    assert shout != _signature_of(UsesAny, helpers=[first.Shout()]) != _signature_of(UsesAny, helpers=[first.Whisper()])
    edited = modules("held_models", source.replace("METHOD", "lower"))
    assert _signature_of(UsesAny, helper=edited.Shout()) != shout
    assert _signature_of(UsesConfig, config=Config()) == plain  # nothing it holds changed


class UsesAny(Step):
    helper: Any = None
    helpers: list[BaseModel] = []

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


class Tags(Step):
    tags: set[str] = set()
    allowed: dict[str, frozenset[int]] = {}

    def process(self, inputs: StepInput) -> StepOutput:
        yield inputs


SIGNATURE_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from stillhouse.cache import step_signatures
from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from tests.cache.test_signature_code import Tags, _no_source_step

with Pipeline(name="seeds") as pipeline:
    load = LoadDataFromDicts(data=[{{"x": 1}}])
    load >> Tags(name="tags", tags={{"alpha", "beta", "gamma", "delta", "epsilon"}},
                 allowed={{"k": frozenset(range(40))}})
    load >> _no_source_step(1)(name="nosource")
signatures = step_signatures(pipeline.dag)
print(signatures["tags"], signatures["nosource"])
"""


def test_signatures_are_the_same_in_every_process_whatever_the_hash_seed() -> None:
    """Sets dump in hash order, and a code object's constants may hold frozensets."""
    script = SIGNATURE_SCRIPT.format(repo=str(REPO))
    printed = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3", "4")
    }
    assert len(printed) == 1, printed


class Boom(Step):
    @property
    def outputs(self) -> list[str]:
        return ["y"]

    def process(self, inputs: StepInput) -> StepOutput:
        raise ValueError("boom")
        yield inputs


def _boom_pipeline(cache: Path, enable_metadata: bool) -> Pipeline:
    with Pipeline(name="meta", cache_dir=cache, executor="sync", enable_metadata=enable_metadata) as pipeline:
        LoadDataFromDicts(data=[{"x": 0}, {"x": 1}]) >> Boom(name="boom")
    return pipeline


def test_rows_stored_without_metadata_do_not_answer_a_run_that_asks_for_it(tmp_path) -> None:
    assert "stillhouse_metadata" not in rows_of(_boom_pipeline(tmp_path, False).run(progress=False))[0]
    rows = rows_of(_boom_pipeline(tmp_path, True).run(progress=False))
    assert [row["stillhouse_metadata"] for row in rows] == [{"error_boom": "ValueError: boom"}] * 2
    assert "stillhouse_metadata" not in rows_of(_boom_pipeline(tmp_path, False).run(progress=False))[0]


ROUTES = """
    from stillhouse.core import routing_batch_function

    @routing_batch_function
    def route(steps):
        return [{target!r}]
"""


class Counted(Step):
    """Counts the batches it computes: whether the step the routing follows ran again."""

    processed: ClassVar[int] = 0

    def process(self, inputs: StepInput) -> StepOutput:
        Counted.processed += 1
        yield inputs


def test_an_edited_routing_function_decides_the_routes_again_and_undoing_it_too(modules, tmp_path) -> None:
    def run(target: str) -> dict[str, list[str]]:
        route = modules("routes", ROUTES.format(target=target) + ("    # pad\n" if target == "c" else "")).route
        with Pipeline(name="routes", cache_dir=tmp_path, executor="sync") as pipeline:
            load = LoadDataFromDicts(data=[{"x": i} for i in range(4)], batch_size=2)
            load >> Counted(name="counted") >> route >> [Tag(name="b", tag="B"), Tag(name="c", tag="C")]
        distiset = pipeline.run(progress=False)
        return {name: [row["z"] for row in rows_of(distiset, name)] if name in distiset else []
                for name in ("b", "c")}

    Counted.processed = 0
    assert run("b") == {"b": ["B"] * 4, "c": []}
    assert run("c") == {"b": [], "c": ["C"] * 4}  # before: the routes the first run stored
    assert run("b") == {"b": ["B"] * 4, "c": []}
    assert Counted.processed == 2  # the step before the routing computed once: its store kept


def test_a_class_whose_name_starts_two_classes_in_its_module_is_still_signed_by_its_own_code(modules) -> None:
    """The fast lookup of a class's source needs one `class Name` line; with two, inspect finds it."""
    source = """
        from stillhouse.core import Step

        class AddK(Step):  # an older one, shadowed below
            def process(self, inputs):
                yield inputs

        class AddK(Step):
            def process(self, inputs):
                yield [{**row, "y": row["x"] + KVALUE} for row in inputs]
    """
    one = _signature_of(modules("twice_named", source.replace("KVALUE", "1")).AddK)
    assert _signature_of(modules("twice_named", source.replace("KVALUE", "2")).AddK) != one


HELPERS = """
    import functools
    import re

    SUFFIX = "!"
    WORDS = re.compile(r"\\w+")

    def shout(text):
        return text.upper() + SUFFIX

    @functools.lru_cache(maxsize=None)
    def cached_count(text):
        return len(WORDS.findall(text))

    def unrelated():
        return "not read by any step"
"""

READER = """
    import json
    import helpers_read
    from helpers_read import shout, cached_count
    from stillhouse.core import Step

    LABELS = ["pos", "neg"]
    SEEN = []

    def clean(text):
        return shout(text.strip())

    class Reader(Step):
        def process(self, inputs):
            SEEN.append(len(inputs))
            yield [
                {**row, "y": clean(row["t"]) + json.dumps(LABELS) + str(cached_count(row["t"]))
                 + helpers_read.SUFFIX}
                for row in inputs
            ]

    def other():
        return 1
"""


@pytest.mark.parametrize(
    ("module", "before", "after"),
    [
        ("reader_read", "return shout(text.strip())", "return shout(text.lstrip())"),  # a helper in its module
        ("reader_read", 'LABELS = ["pos", "neg"]', 'LABELS = ["pos", "neg", "mixed"]'),  # a constant there
        ("helpers_read", "text.upper()", "text.lower()"),  # a helper's code in another module
        ("helpers_read", 'SUFFIX = "!"', 'SUFFIX = "?"'),  # a constant a helper reads there
        ("helpers_read", r'r"\w+"', r'r"\S+"'),  # read by a decorated (lru_cache) helper
    ],
)
def test_editing_a_helper_or_constant_the_step_reads_changes_its_signature(modules, module, before, after) -> None:
    modules("helpers_read", HELPERS)
    reader = modules("reader_read", READER)
    signature = _signature_of(reader.Reader)
    sources = {"helpers_read": HELPERS, "reader_read": READER}
    assert before in sources[module]
    modules(module, sources[module].replace(before, after))
    if module == "helpers_read":
        reader = modules("reader_read", READER)  # imports the edited helpers again
    assert _signature_of(reader.Reader) != signature


def test_what_the_step_does_not_read_and_what_it_fills_while_running_leave_its_signature(modules) -> None:
    modules("helpers_read", HELPERS)
    reader = modules("reader_read", READER)
    signature = _signature_of(reader.Reader)
    reader.SEEN.extend([1, 2, 3])  # a module-level list the step fills: its statement is signed, not its value
    assert _signature_of(reader.Reader) == signature
    modules("helpers_read", HELPERS.replace('"not read by any step"', '"still not read"'))
    reader = modules("reader_read", READER.replace("return 1", "return 2"))
    assert _signature_of(reader.Reader) == signature


def test_an_edited_helper_recomputes_the_step_and_only_it(modules, tmp_path) -> None:
    """End to end: the rows come from the edited helper, the step before keeps its rows."""
    def run(helpers: str) -> list[str]:
        modules("helpers_read", helpers)
        reader = modules("reader_read", READER)
        Counted.processed = 0
        with Pipeline(name="helpers", cache_dir=tmp_path, executor="sync") as pipeline:
            LoadDataFromDicts(data=[{"t": " a b "}, {"t": "c"}]) >> Counted(name="counted") >> reader.Reader(name="reader")
        return [row["y"] for row in rows_of(pipeline.run(progress=False))]

    assert run(HELPERS) == ['A B!["pos", "neg"]2!', 'C!["pos", "neg"]1!']
    assert Counted.processed == 1
    assert run(HELPERS.replace("text.upper()", "text.lower()")) == ['a b!["pos", "neg"]2!', 'c!["pos", "neg"]1!']
    assert Counted.processed == 0  # before: the first run's rows came back, and nothing ran


def test_a_routing_functions_helper_is_signed_with_it(modules) -> None:
    source = """
        from stillhouse.core import routing_batch_function

        def choose(steps):
            return [steps[INDEX]]

        INDEX = 0

        @routing_batch_function
        def route(steps):
            return choose(sorted(steps))
    """

    def signature(index: int) -> str:
        route = modules("routes_helper", source.replace("INDEX = 0", f"INDEX = {index}")).route
        with Pipeline(name="routes") as pipeline:
            LoadDataFromDicts(data=[{"x": 1}]) >> route >> [Tag(name="b", tag="B"), Tag(name="c", tag="C")]
        return step_signatures(pipeline.dag)["b"]

    assert signature(0) != signature(1)


def test_an_object_that_breaks_when_looked_at_is_not_signed_and_breaks_nothing(modules) -> None:
    """A lazy proxy (werkzeug's, a settings object) may raise anything on `hasattr`."""
    source = """
        from stillhouse.core import Step

        class Proxy:
            def __getattr__(self, name):
                raise RuntimeError("working outside of a context")

        CURRENT = Proxy()

        class UsesProxy(Step):
            def process(self, inputs):
                yield [{**row, "y": CURRENT} for row in inputs]
    """
    module = modules("proxied", source)
    assert _signature_of(module.UsesProxy) == _signature_of(module.UsesProxy)
