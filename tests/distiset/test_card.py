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
    distiset.run_summary = [{"step": "load", "rows out": 1}, {"step": "gen", "failed": 0}]
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
    assert "| step | rows out | failed |" in body and "| gen |  | 0 |" in body
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
