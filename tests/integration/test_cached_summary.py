"""The run summary of a rerun that reuses stored results (SPEC §5, §7, §8): without
`retry_failed` a rerun returns what the first run returned, failures included, and its
summary, the CLI and the dataset card say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stillhouse.core import Pipeline, StepInput, step
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.distiset.card import render_card
from tests.support.results import rows_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@step(inputs=["x"], outputs=["z"])
def FailsOnFours(inputs: StepInput):
    """Doubles x; a batch starting at x % 8 == 4 fails (2 of the 4 batches of 16 rows)."""
    if inputs[0]["x"] % 8 == 4:
        raise ValueError(f"boom at x={inputs[0]['x']}")
    yield [{**row, "z": row["x"] * 2} for row in inputs]


@step(inputs=["x"], outputs=[])
def KeepEven(inputs: StepInput):
    yield [row for row in inputs if row["x"] % 2 == 0]


@step(inputs=["x"], outputs=["w"])
def Tagged(inputs: StepInput):
    yield [{**row, "w": "t"} for row in inputs]


def build(cache: Path, *, tagged: bool = False) -> Pipeline:
    """gen (16 rows) >> fail (2 failed batches) >> keep (8 rows) [>> tag]."""
    with Pipeline(name="cached-failures", cache_dir=cache, executor="sync") as pipeline:
        keep = (
            LoadDataFromDicts(name="gen", data=[{"x": i} for i in range(16)], batch_size=4)
            >> FailsOnFours(name="fail", input_batch_size=4)
            >> KeepEven(name="keep", input_batch_size=4)
        )
        if tagged:
            keep >> Tagged(name="tag")
    return pipeline


def _figures(pipeline: Pipeline) -> dict[str, tuple[int, int, int, str]]:
    return {row["step"]: (row["rows_in"], row["rows_out"], row["failed_batches"], row["status"])
            for row in pipeline.last_run_summary}


def test_a_fully_cached_rerun_reports_the_stored_failures_and_rows_in(tmp_path):
    first = build(tmp_path)
    rows = rows_of(first.run(progress=False))
    assert _figures(first)["fail"] == (16, 16, 2, "computed, 2 failed batches")

    again = build(tmp_path)
    distiset = again.run(progress=False)
    assert rows_of(distiset) == rows  # the failures are returned again
    assert sum(row["z"] is None for row in rows) == 4
    assert _figures(again) == {
        "gen": (0, 16, 0, "cached"),
        "fail": (16, 16, 2, "cached, 2 failed batches"),
        "keep": (16, 8, 0, "cached"),
    }
    assert {row["computed_rows"] for row in again.last_run_summary} == {0}
    card = render_card(distiset, "me/failures", pipeline_yaml=None, hub_url="https://h")
    assert "| `fail` | 16 | cached | 2 | — |" in card  # its stored failures; no time
    assert "| `keep` | 8 | cached | — | — |" in card


def test_a_replayed_step_mentions_its_stored_failures_too(tmp_path):
    """A step after `keep` is added: `fail` is not needed, `keep` is replayed (its stored
    batches go through the run), and both say cached, as does a step reused whole."""
    build(tmp_path).run(progress=False)
    tagged = build(tmp_path, tagged=True)
    tagged.run(progress=False)
    figures = _figures(tagged)
    assert figures["fail"] == (16, 16, 2, "cached, 2 failed batches")
    assert figures["keep"] == (16, 8, 0, "cached")
    assert figures["tag"] == (8, 8, 0, "computed")


def test_a_store_finished_before_failures_were_recorded_says_what_it_can(tmp_path):
    build(tmp_path).run(progress=False)
    (meta_path,) = tmp_path.glob("cached-failures/steps/fail-*/meta.json")
    meta = json.loads(meta_path.read_text())
    assert meta["failed_batches"] == 2
    for key in ("failed_batches", "failures_flagged"):  # as an older version wrote it
        del meta[key]
    meta_path.write_text(json.dumps(meta))
    again = build(tmp_path)
    again.run(progress=False)
    assert _figures(again)["fail"] == (16, 16, 0, "cached")


def test_the_cli_says_the_reused_results_hold_failed_batches(tmp_path, monkeypatch, capsys):
    from stillhouse.core import cli

    monkeypatch.setenv("STILLHOUSE_PROGRESS", "0")
    config = tmp_path / "pipeline.yaml"
    build(tmp_path / "unused").save(config)
    argv = ["pipeline", "run", "--config", str(config), "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(argv) == 0
    assert "2 batch(es) failed; their rows have None outputs" in capsys.readouterr().out
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 batch(es) failed in an earlier run whose results were reused; their rows have None outputs" in out


def test_a_remote_cache_reports_stored_failures_and_retries_them_from_the_names(tmp_path):
    """The same on a remote cache (fsspec's memory filesystem): a failed batch's object
    name says so, so the summary and `retry_failed` need no read of the batches."""
    import fsspec

    cache = f"memory://cached-summary-{tmp_path.name}"
    first = build(cache)
    first.run(progress=False)
    fs = fsspec.filesystem("memory")
    names = [p.rsplit("/", 1)[-1] for p in fs.find(cache) if "/fail-" in p and p.rsplit("/", 1)[-1].startswith("b-")]
    assert sorted(n.endswith("-failed.sh") for n in names) == [False, False, True, True]

    again = build(cache)
    again.run(progress=False)
    assert _figures(again)["fail"] == (16, 16, 2, "cached, 2 failed batches")

    retried = build(cache)
    retried.run(progress=False, retry_failed=True)  # FailsOnFours fails the same batches
    assert _figures(retried)["fail"] == (16, 16, 2, "partly cached, 2 failed batches")
    computed = {row["step"]: row["computed_rows"] for row in retried.last_run_summary}
    assert computed["fail"] == 8  # only the two failed batches of 4 rows
