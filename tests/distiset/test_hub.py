"""Distiset.push_to_hub against a fake Hub served over local HTTP (see conftest.py).

The real `datasets` and `huggingface_hub` code paths run: repo creation, LFS
uploads of the Parquet shards, NDJSON commits, README round trips.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from stillhouse.distiset import ParquetOutputWriter

# The fake Hub takes plain LFS uploads (Xet is off), and huggingface_hub's LFS path still
# posts raw bytes with `data=`, which httpx deprecates: not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"
    ),
    pytest.mark.timeout(60),
]

TOKEN = "hf_FAKE_token_never_logged_0123456789"
PIPELINE_YAML = """\
stillhouse: {format_version: 1}
pipeline:
  name: demo
  description: Two generations from one loader.
  steps:
  - {name: load, step: {type_info: {module: m, name: LoadDataFromDicts}}}
  - {name: text, step: {type_info: {module: m, name: Generate}}}
  - {name: scores, step: {type_info: {module: m, name: Score}}}
  connections:
  - {from: load, to: [text, scores]}
  - {from: text, to: []}
  - {from: scores, to: []}
"""


def _distiset(tmp_path, leaves=("text", "scores")):
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "pipeline.yaml").write_text(PIPELINE_YAML)
    (run_dir / "pipeline.log").write_text("INFO a log line\n")
    writer = ParquetOutputWriter(run_dir / "data", list(leaves), rows_per_file=2)
    for leaf in leaves:
        writer.begin(leaf)
        writer.write(leaf, [{"i": i, leaf: f"{leaf}-{i}"} for i in range(5)])
        writer.finish(leaf)
    return writer.result()


def _card(repo):
    text = repo.files["README.md"].decode()
    header, body = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S).groups()
    return yaml.safe_load(header), body


def test_push_uploads_each_leaf_as_a_config_with_card_and_pipeline_files(
    fake_hub, tmp_path, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    distiset = _distiset(tmp_path)
    distiset.push_to_hub("tester/demo", token=TOKEN)

    repo = fake_hub.repos["tester/demo"]
    parquet = sorted(p for p in repo.files if p.endswith(".parquet"))
    assert parquet == ["scores/train-00000-of-00001.parquet", "text/train-00000-of-00001.parquet"]
    table = pq.read_table(io.BytesIO(repo.files["text/train-00000-of-00001.parquet"]))
    assert table.to_pylist() == [{"i": i, "text": f"text-{i}"} for i in range(5)]
    assert repo.files["pipeline.yaml"].decode() == PIPELINE_YAML
    assert repo.files["pipeline.log"] == b"INFO a log line\n"

    metadata, body = _card(repo)
    configs = {c["config_name"]: c["data_files"] for c in metadata["configs"]}
    assert configs == {
        "text": [{"split": "train", "path": "text/train-*"}],
        "scores": [{"split": "train", "path": "scores/train-*"}],
    }
    assert {"synthetic", "stillhouse"} <= set(metadata["tags"])
    assert metadata["size_categories"] == "n<1K"
    assert "| `text` | train | 5 |" in body and "| `scores` | train | 5 |" in body
    assert "```mermaid\ngraph TD" in body and "s0 --> s1" in body and "s0 --> s2" in body
    assert "Two generations from one loader." in body
    assert (
        f'stillhouse pipeline run --config "{fake_hub.url}/datasets/tester/demo/raw/main/pipeline.yaml"'
        in body
    )

    # The card, pipeline.yaml and pipeline.log arrive together, after the data.
    assert fake_hub.commits[-1]["paths"] == ["pipeline.yaml", "pipeline.log", "README.md"]
    assert not [r for r in fake_hub.unhandled if "/api/datasets/" in r]

    # The token went to the Hub on every write, and nowhere into the logs or output.
    writes = [headers for method, _, headers in fake_hub.requests if method in ("POST", "PUT")]
    assert any(h.get("authorization") == f"Bearer {TOKEN}" for h in writes)
    captured = capsys.readouterr()
    assert caplog.records, "expected the push to log something at DEBUG"
    assert TOKEN not in caplog.text
    assert TOKEN not in captured.out + captured.err


def test_a_single_leaf_is_the_default_config(fake_hub, tmp_path):
    distiset = _distiset(tmp_path, leaves=("only",))
    distiset.push_to_hub("tester/single", token=TOKEN)
    repo = fake_hub.repos["tester/single"]
    assert "data/train-00000-of-00001.parquet" in repo.files
    metadata, body = _card(repo)
    assert [c["config_name"] for c in metadata["configs"]] == ["default"]
    assert '"tester/single", "default"' in body


def test_split_leaves_push_both_splits(fake_hub, tmp_path):
    distiset = _distiset(tmp_path, leaves=("only",)).train_test_split(0.6, seed=0)
    distiset.push_to_hub("tester/split", token=TOKEN)
    repo = fake_hub.repos["tester/split"]
    assert {p for p in repo.files if p.endswith(".parquet")} == {
        "data/train-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet",
    }
    _, body = _card(repo)
    assert "| `default` | train | 3 |" in body and "| `default` | test | 2 |" in body


def test_include_script_and_no_card(fake_hub, tmp_path, monkeypatch):
    script = tmp_path / "make_data.py"
    script.write_text("print('hello')\n")
    monkeypatch.setattr(sys, "argv", [str(script)])
    distiset = _distiset(tmp_path)
    distiset.push_to_hub("tester/script", token=TOKEN, generate_card=False, include_script=True)
    repo = fake_hub.repos["tester/script"]
    assert repo.files["make_data.py"] == b"print('hello')\n"
    assert "pipeline.yaml" in repo.files
    _, body = _card(repo)  # the README datasets wrote, with no stillhouse body
    assert "stillhouse pipeline run" not in body


def test_the_script_is_named_in_the_card(fake_hub, tmp_path, monkeypatch):
    script = tmp_path / "make_data.py"
    script.write_text("print('hello')\n")
    monkeypatch.setattr(sys, "argv", [str(script)])
    _distiset(tmp_path).push_to_hub("tester/named", token=TOKEN, include_script=True)
    _, body = _card(fake_hub.repos["tester/named"])
    assert f"[`make_data.py`]({fake_hub.url}/datasets/tester/named/raw/main/make_data.py)" in body


def test_pushing_again_replaces_the_data(fake_hub, tmp_path):
    _distiset(tmp_path / "first").push_to_hub("tester/again", token=TOKEN)
    second = _distiset(tmp_path / "second", leaves=("text",))
    second.push_to_hub("tester/again", token=TOKEN)
    repo = fake_hub.repos["tester/again"]
    metadata, _ = _card(repo)
    # datasets keeps other configs in the header; the single leaf is now "default".
    assert {c["config_name"] for c in metadata["configs"]} == {"text", "scores", "default"}


def test_an_empty_distiset_is_refused(fake_hub):
    from stillhouse.distiset import Distiset

    with pytest.raises(ValueError, match="Nothing to push to 'tester/none'"):
        Distiset().push_to_hub("tester/none", token=TOKEN)
    assert fake_hub.requests == []


def _run(tmp_path, rows=6):
    """A real run (sync executor, cached in `tmp_path`): inline rows >> a tag."""
    from stillhouse.core import Pipeline
    from stillhouse.core.steps import LoadDataFromDicts
    from stillhouse.core.testing.steps import Tag

    with Pipeline(name="hubrun", cache_dir=str(tmp_path / "cache"), executor="sync") as pipeline:
        LoadDataFromDicts(name="load", data=[{"x": i} for i in range(rows)]) >> Tag(name="tag")
    return pipeline.run(progress=False)


def test_the_card_reproduce_command_runs_from_the_hub(fake_hub, tmp_path):
    """pipeline.yaml refers to its inline rows (`inline_data/<sha>.json`): they go up in the
    same commit at that path, so the card's command, run as a reader would, works."""
    distiset = _run(tmp_path)
    run_dir = distiset.pipeline_path.parent
    [inline] = [p.relative_to(run_dir).as_posix() for p in (run_dir / "inline_data").iterdir()]
    distiset.push_to_hub("tester/repro", token=TOKEN)

    repo = fake_hub.repos["tester/repro"]
    assert f"inline_data: {inline}".encode() in repo.files["pipeline.yaml"]
    assert repo.files[inline] == (run_dir / inline).read_bytes()
    assert fake_hub.commits[-1]["paths"] == ["pipeline.yaml", inline, "pipeline.log", "README.md"]

    _, body = _card(repo)
    [command] = [line for line in body.splitlines() if line.startswith("stillhouse pipeline run")]
    env = {
        **os.environ,  # HF_ENDPOINT points at the fake Hub; no token: a reader needs none
        "STILLHOUSE_CACHE_DIR": str(tmp_path / "reader-cache"),
        "STILLHOUSE_PROGRESS": "0",
    }
    script = Path(sys.executable).parent / "stillhouse"  # the console script uv installed
    done = subprocess.run(
        [str(script), *shlex.split(command)[1:]], capture_output=True, text=True, timeout=60,
        env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "default: 6 rows" in done.stdout
    assert not fake_hub.unhandled


def test_the_card_of_a_cached_rerun_counts_the_stored_rows(fake_hub, tmp_path):
    _run(tmp_path)
    again = _run(tmp_path)  # the same script run again: every step comes from the cache
    again.push_to_hub("tester/cached", token=TOKEN)
    _, body = _card(fake_hub.repos["tester/cached"])
    section = body.split("## Run summary", 1)[1].split("\n## ", 1)[0]
    assert "every step's results came from the cache" in section
    assert "| `load` | 6 | cached |" in section and "| `tag` | 6 | cached |" in section
    assert "in_flight" not in section and "generation" not in section


def test_only_inline_files_beside_pipeline_yaml_go_up(fake_hub, tmp_path, caplog):
    """A missing data file is a warning (the push goes on); a reference outside the
    pipeline file's folder is never followed."""
    distiset = _distiset(tmp_path)
    run_dir = distiset.pipeline_path.parent
    (run_dir / "inline_data").mkdir()
    (run_dir / "inline_data" / "aa.json").write_text("[1]")
    (tmp_path / "private.json").write_text("[2]")
    references = {
        "here": {"inline_data": "inline_data/aa.json", "sha256": "a" * 64, "rows": 1},
        "gone": {"inline_data": "inline_data/bb.json", "sha256": "b" * 64, "rows": 1},
        "out": {"inline_data": "../private.json", "sha256": "c" * 64, "rows": 1},
    }
    spec = yaml.safe_load(PIPELINE_YAML)
    spec["pipeline"]["steps"][0]["step"].update(references)
    distiset.pipeline_path.write_text(yaml.safe_dump(spec))
    caplog.set_level(logging.WARNING, logger="stillhouse.distiset")

    distiset.push_to_hub("tester/inline", token=TOKEN)
    repo = fake_hub.repos["tester/inline"]
    assert repo.files["inline_data/aa.json"] == b"[1]"
    assert not [path for path in repo.files if "bb.json" in path or "private" in path]
    assert "inline_data/bb.json, which is missing" in caplog.text
    assert "'../private.json', outside its folder" in caplog.text
