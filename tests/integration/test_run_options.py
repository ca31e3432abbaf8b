"""run() options: parameters, dry_run, dataset, load_groups, requirements, validation order."""

from __future__ import annotations

import pandas as pd
import pytest

from stillhouse.core import Pipeline
from stillhouse.core.errors import (
    DatasetArgumentError,
    MissingRequirementsError,
    RuntimeParameterError,
    UnknownExecutorError,
)
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of
from tests.support.steps import Double, NeedsParam, Recorder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def rows(n: int) -> list[dict[str, int]]:
    return [{"x": i} for i in range(n)]


def test_runtime_parameters_are_set_from_run(tmp_path):
    with Pipeline(name="params", cache_dir=tmp_path, executor="mp") as pipeline:
        LoadDataFromDicts(data=rows(3)) >> NeedsParam(name="gen")
    result = pipeline.run(parameters={"gen": {"temperature": 0.7}}, use_cache=False, progress=False)
    assert [r["temperature"] for r in rows_of(result)] == [0.7] * 3


def test_missing_runtime_parameter_fails_before_any_worker_starts(tmp_path):
    with Pipeline(name="params", cache_dir=tmp_path, executor="mp") as pipeline:
        LoadDataFromDicts(data=rows(3)) >> NeedsParam(name="gen")
    with pytest.raises(RuntimeParameterError, match=r"'gen'.*temperature"):
        pipeline.run(use_cache=False, progress=False)
    assert not (tmp_path / "params").exists()  # nothing was opened, nothing started


def test_unknown_step_in_parameters_is_a_warning(tmp_path):
    with Pipeline(name="params", cache_dir=tmp_path, executor="sync") as pipeline:
        LoadDataFromDicts(data=rows(3)) >> Double()
    with pytest.warns(UserWarning, match="'nope'"):
        pipeline.run(parameters={"nope": {"x": 1}}, use_cache=False, progress=False)


def test_unknown_executor_lists_the_installed_ones(tmp_path):
    with Pipeline(name="exec", cache_dir=tmp_path, executor="warp-drive") as pipeline:
        LoadDataFromDicts(data=rows(3)) >> Double()
    with pytest.raises(UnknownExecutorError, match=r"'warp-drive'.*mp.*threaded"):
        pipeline.run(progress=False)


def test_missing_requirements_are_listed_before_the_run(tmp_path):
    with Pipeline(name="req", cache_dir=tmp_path, requirements=["surely-not-installed-pkg>=1", "pydantic>=2"]) as pipeline:
        LoadDataFromDicts(data=rows(3)) >> Double()
    with pytest.raises(MissingRequirementsError) as info:
        pipeline.run(progress=False)
    assert isinstance(info.value, ModuleNotFoundError)  # what distilabel raises: ported `except`s catch it
    assert "surely-not-installed-pkg>=1" in str(info.value)
    assert "pydantic" not in str(info.value).split("installed:")[1].split("Install")[0]


def test_dry_run_sends_one_small_batch_and_leaves_no_cache(tmp_path):
    with Pipeline(name="dry", cache_dir=tmp_path, executor="mp") as pipeline:
        LoadDataFromDicts(data=rows(100), batch_size=10) >> Double(input_batch_size=10)
    result = pipeline.dry_run(batch_size=2)
    assert [r["y"] for r in rows_of(result)] == [0, 2]
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize("kind", ["list", "pandas", "datasets"])
def test_run_dataset_accepts_lists_dataframes_and_datasets(tmp_path, kind):
    data = rows(4)
    if kind == "pandas":
        data = pd.DataFrame(data)
    elif kind == "datasets":
        import datasets

        data = datasets.Dataset.from_list(data)
    with Pipeline(name="ds", cache_dir=tmp_path, executor="sync") as pipeline:
        Double()
    assert [r["y"] for r in rows_of(pipeline.run(dataset=data, use_cache=False, progress=False))] == [0, 2, 4, 6]


def test_a_later_run_with_dataset_reads_its_new_rows(tmp_path):
    with Pipeline(name="ds", cache_dir=tmp_path, executor="sync") as pipeline:
        Double(name="double")
    pipeline.dry_run(dataset=rows(2))  # a dry run first, as a notebook does
    assert [r["y"] for r in rows_of(pipeline.run(dataset=rows(3), progress=False))] == [0, 2, 4]
    assert [r["y"] for r in rows_of(pipeline.run(dataset=[{"x": 5}], progress=False))] == [10]
    # Without dataset= the last rows stay, as in distilabel.
    assert [r["y"] for r in rows_of(pipeline.run(progress=False))] == [10]
    assert sorted(pipeline.dag.step_names) == ["double", "load_dataset"]


def test_a_run_with_dataset_inside_the_with_block_leaves_no_pipeline_current(tmp_path, caplog):
    from stillhouse.core import _context

    with Pipeline(name="ds", cache_dir=tmp_path, executor="sync") as pipeline:
        Double()
        pipeline.run(dataset=rows(1), progress=False)
    assert _context.current_pipeline.get() is None
    stray = Double(name="stray")
    assert "'stray' was created outside a pipeline" in caplog.text
    assert stray.pipeline is None and "stray" not in pipeline.dag.step_names


def test_dataset_with_a_generator_is_an_error(tmp_path):
    with Pipeline(name="ds", cache_dir=tmp_path, executor="sync") as pipeline:
        LoadDataFromDicts(data=rows(2)) >> Double()
    with pytest.raises(DatasetArgumentError, match="generator"):
        pipeline.run(dataset=rows(2), progress=False)


@pytest.mark.parametrize("executor", ["mp", "threaded"])
def test_load_groups_start_a_stage_only_after_the_previous_one_ended(tmp_path, executor):
    log = tmp_path / "events.log"
    with Pipeline(name="stages", cache_dir=tmp_path, executor=executor) as pipeline:
        first = Recorder(name="first", log_path=str(log), input_batch_size=3)
        second = Recorder(name="second", log_path=str(log), input_batch_size=3)
        LoadDataFromDicts(data=rows(10), batch_size=4) >> first >> second
    result = pipeline.run(use_cache=False, progress=False, load_groups=[[first], [second]])
    assert len(rows_of(result)) == 10
    events = {tuple(line.split()[:2]): float(line.split()[2]) for line in log.read_text().splitlines()}
    assert events[("first", "unload")] <= events[("second", "load")]


def test_step_requirements_are_checked_before_the_run(tmp_path):
    from stillhouse.core import Step, requirements

    @requirements(["another-missing-package==0.1", "pyyaml"])
    class NeedsPackages(Step):
        def process(self, inputs):
            yield inputs

    with Pipeline(name="req-step", cache_dir=tmp_path, executor="sync",
                  requirements=["another-missing-package==0.1"]) as pipeline:
        LoadDataFromDicts(data=rows(1)) >> NeedsPackages(name="needs")
    with pytest.raises(MissingRequirementsError, match=r"another-missing-package==0\.1") as info:
        pipeline.run(progress=False)
    assert "pyyaml" not in str(info.value).lower().split("installed:")[1]
    # Each missing package names who asked for it.
    assert ("another-missing-package==0.1 (needed by step 'needs', the pipeline's requirements=)"
            in str(info.value))
