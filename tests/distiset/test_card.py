"""The dataset card, rendered without a Hub."""

from __future__ import annotations

import re

import yaml
from datasets import Dataset, DatasetDict

from stillhouse.distiset import Distiset
from stillhouse.distiset.card import render_card, size_category

EXISTING = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
tags:
- mine
---
old body
"""


def _distiset(rows):
    return Distiset(default=DatasetDict(train=Dataset.from_list(rows)))


def _split(card):
    header, body = re.match(r"^---\n(.*?)\n---\n(.*)$", card, re.S).groups()
    return yaml.safe_load(header), body


def test_keeps_the_header_datasets_wrote_and_replaces_the_body():
    card = render_card(
        _distiset([{"x": 1}]),
        "me/data",
        pipeline_yaml=None,
        hub_url="https://hub.example",
        existing_readme=EXISTING,
    )
    metadata, body = _split(card)
    assert metadata["configs"][0]["config_name"] == "default"
    assert metadata["tags"] == ["mine", "synthetic", "stillhouse"]
    assert "old body" not in body
    assert "## Reproduce" not in body  # nothing to reproduce from without pipeline.yaml


def test_steps_with_quotes_long_values_and_the_run_summary():
    distiset = _distiset([{"text": "y" * 1000, "items": list(range(20)), "blob": b"abc"}])
    distiset.run_summary = [
        {"step": 'say "hi"', "rows_out": 1, "status": "computed", "batches": 1, "failed_batches": 0,
         "seconds": 0.5},
    ]
    pipeline_yaml = yaml.safe_dump(
        {
            "pipeline": {
                "name": "p",
                "steps": [
                    {"name": 'say "hi"', "step": {"type_info": {"name": "Gen"}}},
                    {"name": "sink", "step": {}},
                ],
                "connections": [{"from": 'say "hi"', "to": ["sink"]}, {"from": "sink", "to": []}],
            }
        }
    )
    card = render_card(distiset, "me/data", pipeline_yaml=pipeline_yaml, hub_url="https://h/")
    _, body = _split(card)
    assert 's0["say #quot;hi#quot;<br/><i>Gen</i>"]' in body and "s0 --> s1" in body
    assert "https://h/datasets/me/data/raw/main/pipeline.yaml" in body
    assert '| `say "hi"` | 1 | computed | 0 | 0.50 |' in body
    assert "... (1000 characters)" in body and "... (20 items)" in body and "<3 bytes>" in body


def test_an_unreadable_pipeline_yaml_only_loses_the_diagram():
    card = render_card(_distiset([{"x": 1}]), "me/d", pipeline_yaml="{not: [yaml", hub_url="h")
    _, body = _split(card)
    assert "```mermaid" not in body and "stillhouse pipeline run" in body


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 10**6, 10**10)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "1M<n<10M",
        "n>1B",
    ]


def test_the_card_says_to_review_the_pipeline_file_before_running_it():
    card = render_card(_distiset([{"x": 1}]), "me/d", pipeline_yaml="pipeline: {}", hub_url="https://h")
    _, body = _split(card)
    reproduce = body[body.index("## Reproduce"):]
    assert "Review the file before you run it" in reproduce
    assert "can only name\n> stillhouse step classes and routing functions" in reproduce
    # the warning and `info` come before the command that runs the file
    assert reproduce.index("Review") < reproduce.index("pipeline info") < reproduce.index("pipeline run")


def _run_body(distiset, pipeline_yaml=None):
    card = render_card(distiset, "me/d", pipeline_yaml=pipeline_yaml, hub_url="https://h")
    _, body = _split(card)
    return body.split("## Run summary", 1)[1].split("\n## ", 1)[0]


def test_the_run_summary_is_a_table_a_reader_needs_not_the_engine_internals():
    distiset = _distiset([{"x": 1}] * 7)
    internals = {"in_flight": 0, "eta_s": None, "rows_per_s": 3.5, "signature": "ab" * 32,
                 "store": "steps/gen-abab", "generation": "f00d", "started_worker": True}
    distiset.run_summary = [
        {"step": "load", "rows_in": 0, "rows_out": 8, "batches": 2, "cached_batches": 2,
         "failed_batches": 0, "seconds": 0.012, "status": "cached", **internals},
        {"step": "gen", "rows_in": 8, "rows_out": 7, "batches": 2, "cached_batches": 1,
         "failed_batches": 1, "seconds": 3.456, "status": "partly cached, 1 failed batches",
         **internals},
    ]
    section = _run_body(distiset)
    assert "| Step | Rows out | Results | Failed batches | Time (s) |" in section
    assert "| `load` | 8 | cached | 0 | 0.01 |" in section
    assert "| `gen` | 7 | partly cached | 1 | 3.46 |" in section
    for internal in (*internals, "ab" * 32, "steps/gen-abab", "rows_in", "cached_batches"):
        assert internal not in section
    # Both steps ran batches through this run: nothing was taken whole from the cache.
    assert "computed nothing" not in section and "—" not in section


def test_the_run_summary_after_a_cached_rerun_counts_the_stored_rows(tmp_path):
    """A rerun takes every step from the cache: it computes nothing, and the engine reports
    the rows each step's store holds. The card shows them, intermediate steps included,
    and says they were reused."""
    from stillhouse.core import Pipeline
    from stillhouse.core.steps import LoadDataFromDicts
    from stillhouse.core.testing.steps import Double, DropOdd, Tag

    def run():
        with Pipeline(name="rerun", cache_dir=str(tmp_path / "cache"), executor="sync") as p:
            load = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(10)], batch_size=4)
            load >> Double(name="double") >> [Tag(name="tag"), DropOdd(name="drop_odd")]
        return p.run(progress=False)

    first, again = run(), run()
    assert {row["status"] for row in again.run_summary} == {"cached"}
    assert {row["step"]: row["rows_out"] for row in again.run_summary} == {
        "load": 10, "double": 10, "tag": 10, "drop_odd": 5,  # what the stores hold
    }
    assert {row["computed_rows"] for row in again.run_summary} == {0}
    pipeline_yaml = again.pipeline_path.read_text(encoding="utf-8")

    section = _run_body(again, pipeline_yaml)
    assert "This run computed nothing: every step's results came from the cache" in section
    assert "| `load` | 10 | cached | — | — |" in section
    assert "| `tag` | 10 | cached | — | — |" in section
    assert "| `drop_odd` | 5 | cached | — | — |" in section
    assert "| `double` | 10 | cached | — | — |" in section  # an intermediate step's stored rows
    assert "—: not known to this run" in section  # its failed batches and time
    # The first run computed everything: its own counts and times.
    first_section = _run_body(first, pipeline_yaml)
    assert "| `double` | 10 | computed | 0 |" in first_section
    assert "| `drop_odd` | 5 | computed | 0 |" in first_section
    assert "cache" not in first_section


def test_a_single_leaf_cached_is_counted_from_the_default_configuration():
    distiset = _distiset([{"x": 1}] * 3)  # built by hand: no leaf_steps recorded
    distiset.run_summary = [
        {"step": "load", "rows_out": 0, "batches": 0, "failed_batches": 0, "total": 3,
         "status": "cached"},
        {"step": "only", "rows_out": 0, "batches": 0, "failed_batches": 0, "total": 0,
         "status": "cached"},
    ]
    pipeline_yaml = yaml.safe_dump({"pipeline": {
        "steps": [{"name": "load"}, {"name": "only"}],
        "connections": [{"from": "load", "to": ["only"]}, {"from": "only", "to": []}],
    }})
    section = _run_body(distiset, pipeline_yaml)
    assert "| `load` | 3 | cached |" in section and "| `only` | 3 | cached |" in section


def test_a_reused_step_whose_store_could_not_count_its_rows_shows_a_dash():
    """The engine reports 0 rows out for a reused step whose store cannot say (a store
    finished before it recorded the count): an intermediate step then shows a dash."""
    distiset = _distiset([{"x": 1}] * 3)
    distiset.run_summary = [
        {"step": "load", "rows_out": 3, "batches": 0, "failed_batches": 0, "status": "cached"},
        {"step": "middle", "rows_out": 0, "batches": 0, "failed_batches": 0, "status": "cached"},
        {"step": "only", "rows_out": 3, "batches": 1, "cached_batches": 0, "failed_batches": 0,
         "seconds": 0.5, "status": "computed"},
    ]
    pipeline_yaml = yaml.safe_dump({"pipeline": {
        "steps": [{"name": "load"}, {"name": "middle"}, {"name": "only"}],
        "connections": [{"from": "load", "to": ["middle"]}, {"from": "middle", "to": ["only"]},
                        {"from": "only", "to": []}],
    }})
    section = _run_body(distiset, pipeline_yaml)
    assert "Steps marked *cached* took their results from the cache" in section
    assert "| `load` | 3 | cached | — | — |" in section
    assert "| `middle` | — | cached | — | — |" in section
    assert "| `only` | 3 | computed | 0 | 0.50 |" in section
