"""What a step's code reads is signed however it reaches it (docs/caching.md, "What
invalidates what"): a function its class binds under another name or wraps in a
decorator, a constant a default argument or the class body reads, what a constant's
statement refers to, a module reached through a dotted path of any depth. Each case
edits real module files: the signature changes with the edit and stays the same
without one."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from stillhouse.cache import step_signatures
from stillhouse.core import Pipeline
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`write({path: source})` makes or edits module files (`pkg/helpers.py` too) in a
    folder on `sys.path`, then imports them afresh; the modules are forgotten after the
    test."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit of the same size, within a second
    written: set[str] = set()

    def forget() -> None:
        for name in sorted(written, reverse=True):
            sys.modules.pop(name, None)

    def write(sources: dict[str, str]) -> Any:
        for path, source in sources.items():
            file = folder / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(textwrap.dedent(source))
            written.add(path.removesuffix(".py").removesuffix("/__init__").replace("/", "."))
        forget()  # every module imported again, as by a new process
        importlib.invalidate_caches()
        return importlib.import_module("stepmod")

    yield write
    forget()


def _signature(module: Any) -> str:
    with Pipeline(name="reads") as pipeline:
        LoadDataFromDicts(data=[{"t": "Hello"}]) >> module.S(name="s")
    return step_signatures(pipeline.dag)["s"]


def _step(pre: str, body: str) -> str:
    return (
        "import functools\nfrom stillhouse.core import Step\n" + pre
        + "\nclass S(Step):\n    @property\n    def outputs(self):\n        return ['y']\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
    )


DECORATOR = """
def deco(fn):
    mark = "!"
    @functools.wraps(fn)
    def wrapper(self, *inputs):
        for batch in fn(self, *inputs):
            yield [{**r, "y": r["y"] + mark + "."} for r in batch]
    return wrapper
"""

CASES: dict[str, tuple[dict[str, str], str, str, str]] = {
    # name: (files, file edited, text before, text after)
    "staticmethod_alias": (
        {"stepmod.py": _step("def clean(x):\n    return x.upper()\n", """
            helper = staticmethod(clean)
            def process(self, inputs):
                yield [{**r, "y": self.helper(r["t"])} for r in inputs]
        """)},
        "stepmod.py", "upper", "lower",
    ),
    "method_from_other_module": (
        {
            "stepmod.py": _step("from helm import fix as hfix\n", """
                fix = hfix
                def process(self, inputs):
                    yield [{**r, "y": self.fix(r["t"])} for r in inputs]
            """),
            "helm.py": "def fix(self, x):\n    return x.upper()\n",
        },
        "helm.py", "upper", "lower",
    ),
    "decorator_wrapper_body": (
        {"stepmod.py": _step(DECORATOR, """
            @deco
            def process(self, inputs):
                yield [{**r, "y": r["t"]} for r in inputs]
        """)},
        "stepmod.py", '"."', '"?"',
    ),
    "decorated_helper": (
        {"stepmod.py": _step(DECORATOR.replace("self, *inputs", "*inputs").replace("fn(self, ", "fn(")
                             + "@deco\ndef rows(inputs):\n    yield [{**r, 'y': r['t']} for r in inputs]\n", """
            def process(self, inputs):
                yield from rows(inputs)
        """)},
        "stepmod.py", '"."', '"?"',
    ),
    "default_argument": (
        {"stepmod.py": _step("K = 1\n", """
            def process(self, inputs, k=K):
                yield [{**r, "y": r["t"] * k} for r in inputs]
        """)},
        "stepmod.py", "K = 1", "K = 2",
    ),
    "helper_default_argument": (
        {"stepmod.py": _step("K = 1\ndef h(x, *, k=K):\n    return x * k\n", """
            def process(self, inputs):
                yield [{**r, "y": h(r["t"])} for r in inputs]
        """)},
        "stepmod.py", "K = 1", "K = 2",
    ),
    "lambda_default_argument": (
        {"stepmod.py": _step("K = 1\nh = lambda x, k=K: x * k\n", """
            def process(self, inputs):
                yield [{**r, "y": h(r["t"])} for r in inputs]
        """)},
        "stepmod.py", "K = 1", "K = 2",
    ),
    "library_decorated_helper": (
        {"stepmod.py": _step("import contextlib\nK = 1\n@contextlib.contextmanager\ndef scaled(k=K):\n    yield k\n", """
            def process(self, inputs):
                with scaled() as k:
                    yield [{**r, "y": r["t"] * k} for r in inputs]
        """)},
        "stepmod.py", "K = 1", "K = 2",
    ),
    "class_in_the_class_body": (
        {"stepmod.py": _step("K = 1\n", """
            class Scale:
                def of(self, text):
                    return text * K
            def process(self, inputs):
                yield [{**r, "y": self.Scale().of(r["t"])} for r in inputs]
        """)},
        "stepmod.py", "K = 1", "K = 2",
    ),
    "class_variable": (
        {"stepmod.py": _step("from typing import ClassVar\nFACTOR = 1\n", """
            factor: ClassVar[int] = FACTOR
            def process(self, inputs):
                yield [{**r, "y": r["t"] * self.factor} for r in inputs]
        """)},
        "stepmod.py", "FACTOR = 1", "FACTOR = 2",
    ),
    "dict_of_functions": (
        {"stepmod.py": _step("def up(x):\n    return x.upper()\nOPS = {'a': up}\n", """
            def process(self, inputs):
                yield [{**r, "y": OPS['a'](r["t"])} for r in inputs]
        """)},
        "stepmod.py", "upper", "lower",
    ),
    "partial_helper": (
        {"stepmod.py": _step("def _clean(x, mode):\n    return x.upper()\nclean = functools.partial(_clean, mode=1)\n", """
            def process(self, inputs):
                yield [{**r, "y": clean(r["t"])} for r in inputs]
        """)},
        "stepmod.py", "upper", "lower",
    ),
    "constant_from_a_function": (
        {"stepmod.py": _step("def mk():\n    return '!'\nSUFFIX = mk()\n", """
            def process(self, inputs):
                yield [{**r, "y": r["t"] + SUFFIX} for r in inputs]
        """)},
        "stepmod.py", "'!'", "'?'",
    ),
    "constant_from_a_constant": (
        {
            "stepmod.py": _step("from prompts import PROMPT\n", """
                def process(self, inputs):
                    yield [{**r, "y": PROMPT.format(r["t"])} for r in inputs]
            """),
            "prompts.py": "TEMPLATE = 'say {}'\nPROMPT = TEMPLATE + '!'\n",
        },
        "prompts.py", "say", "shout",
    ),
    "star_imported_constant": (
        {
            "stepmod.py": _step("from consts_star import *\n", """
                def process(self, inputs):
                    yield [{**r, "y": r["t"] + SUFFIXES[0]} for r in inputs]
            """),
            "consts_star.py": "SUFFIXES = ['!']\n",
        },
        "consts_star.py", "'!'", "'?'",
    ),
    "nested_module_function": (
        {
            "stepmod.py": _step("import pkgq.helpers\n", """
                def process(self, inputs):
                    yield [{**r, "y": pkgq.helpers.clean(r["t"])} for r in inputs]
            """),
            "pkgq/__init__.py": "",
            "pkgq/helpers.py": "def clean(x):\n    return x.upper()\n",
        },
        "pkgq/helpers.py", "upper", "lower",
    ),
    "nested_module_constant": (
        {
            "stepmod.py": _step("import pkgc.deeper.consts\n", """
                def process(self, inputs):
                    yield [{**r, "y": r["t"] + pkgc.deeper.consts.SUFFIX} for r in inputs]
            """),
            "pkgc/__init__.py": "",
            "pkgc/deeper/__init__.py": "",
            "pkgc/deeper/consts.py": "SUFFIX = '!'\n",
        },
        "pkgc/deeper/consts.py", "'!'", "'?'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_edit_of_what_the_step_reads_changes_its_signature_and_nothing_else_does(files, case) -> None:
    sources, edited, before, after = CASES[case]
    assert before in sources[edited]
    signature = _signature(files(sources))
    assert _signature(files(sources)) == signature  # written again, unchanged
    assert _signature(files({**sources, edited: sources[edited].replace(before, after)})) != signature


def test_an_edited_decorator_recomputes_the_step(files, tmp_path) -> None:
    """End to end: before, the rows of the first version came back."""
    sources, edited, before, after = CASES["decorator_wrapper_body"]

    def run(sources: dict[str, str]) -> list[str]:
        module = files(sources)
        with Pipeline(name="decorated", cache_dir=tmp_path, executor="sync") as pipeline:
            LoadDataFromDicts(data=[{"t": "a"}, {"t": "b"}]) >> module.S(name="s")
        return [row["y"] for row in rows_of(pipeline.run(progress=False))]

    assert run(sources) == ["a!.", "b!."]
    assert run({**sources, edited: sources[edited].replace(before, after)}) == ["a!?", "b!?"]


SIGNATURE_SCRIPT = """
import sys
sys.path[:0] = [{repo!r}, {folder!r}]
import stepmod
from tests.cache.test_signature_code_reads import _signature
print(_signature(stepmod))
"""


def test_what_the_class_body_and_a_constants_statement_read_is_signed_alike_in_every_process(files, tmp_path) -> None:
    """Names found in source are signed in sorted order, never in a set's order."""
    sources = {
        "stepmod.py": _step("from typing import ClassVar\nimport pkgq.helpers\nA, B, C, D = 1, 2, 3, 4\n"
                            "ALL = {A: B, C: D, 'f': pkgq.helpers.clean}\n", """
            factor: ClassVar[tuple] = (A, B, C, D)
            def process(self, inputs, table=ALL):
                yield [{**r, "y": pkgq.helpers.clean(r["t"]) * len(table)} for r in inputs]
        """),
        "pkgq/__init__.py": "",
        "pkgq/helpers.py": "def clean(x):\n    return x.upper()\n",
    }
    files(sources)

    def signatures() -> set[str]:
        script = SIGNATURE_SCRIPT.format(repo=str(REPO), folder=str(tmp_path / "modules"))
        return {
            subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60,
                env={**os.environ, "PYTHONHASHSEED": seed},
            ).stdout
            for seed in ("1", "2", "3")
        }

    first = signatures()
    assert len(first) == 1, first
    files({**sources, "pkgq/helpers.py": "def clean(x):\n    return x.lower()\n"})
    assert signatures() != first
