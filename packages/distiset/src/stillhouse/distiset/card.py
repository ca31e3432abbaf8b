"""The dataset card (`README.md`) pushed with a Distiset.

Pure text building: it keeps the YAML header `datasets` wrote (the `configs` and
`dataset_info` that make each leaf loadable by name) and replaces the body with a
description of the pipeline, its results and how to reproduce them. Talking to
the Hub belongs in `hub.py`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml
from huggingface_hub import DatasetCard

if TYPE_CHECKING:
    from stillhouse.distiset.distiset import Distiset

TAGS = ("synthetic", "stillhouse")
_SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)
# Keep the card readable: long values of the example rows are cut.
_MAX_EXAMPLE_CHARS = 300
_MAX_EXAMPLE_ITEMS = 5


def size_category(rows: int) -> str:
    """The Hub's `size_categories` value for a dataset of `rows` rows."""
    return next((name for limit, name in _SIZE_CATEGORIES if rows < limit), "n>1B")


def render_card(
    distiset: Distiset,
    repo_id: str,
    *,
    pipeline_yaml: str | None,
    hub_url: str,
    existing_readme: str | None = None,
    script_name: str | None = None,
) -> str:
    """The full `README.md`: the existing YAML header, updated, and a new body."""
    card = DatasetCard(existing_readme or "", ignore_metadata_errors=True)
    tags = list(getattr(card.data, "tags", None) or [])
    card.data.tags = tags + [tag for tag in TAGS if tag not in tags]
    rows = [sum(counts.values()) for counts in distiset.row_counts().values()]
    card.data.size_categories = size_category(max(rows, default=0))
    raw_url = f"{hub_url.rstrip('/')}/datasets/{repo_id}/raw/main"
    sections = [
        _summary(distiset, repo_id, _pipeline_info(pipeline_yaml)),
        _reproduce(raw_url, pipeline_yaml is not None, script_name),
        _run_summary(distiset.run_summary),
        _examples(distiset),
        _artifacts(distiset),
    ]
    card.text = "\n".join(section for section in sections if section)
    return str(card)


def _pipeline_info(text: str | None) -> dict[str, Any]:
    """Name, description, steps and edges from a `pipeline.yaml` (empty if unreadable)."""
    if not text:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    spec = data.get("pipeline") if isinstance(data, dict) else None
    if not isinstance(spec, dict):
        return {}
    steps = []
    for entry in spec.get("steps") or []:
        type_info = (
            ((entry.get("step") or {}).get("type_info") or {}) if isinstance(entry, dict) else {}
        )
        if isinstance(entry, dict) and entry.get("name"):
            steps.append((str(entry["name"]), str(type_info.get("name") or "")))
    edges = [
        (str(connection["from"]), str(target))
        for connection in spec.get("connections") or []
        if isinstance(connection, dict) and connection.get("from")
        for target in connection.get("to") or []
    ]
    return {
        "name": spec.get("name"),
        "description": spec.get("description"),
        "steps": steps,
        "edges": edges,
    }


def _summary(distiset: Distiset, repo_id: str, info: dict[str, Any]) -> str:
    title = repo_id.split("/")[-1]
    lines = [f"# {title}", "", "This dataset was made with a stillhouse pipeline"]
    lines[-1] += f" named `{info['name']}`." if info.get("name") else "."
    if info.get("description"):
        lines += ["", str(info["description"])]
    lines += ["", "## Configurations", "", "| Configuration | Split | Rows |", "|---|---|---|"]
    for config, counts in distiset.row_counts().items():
        lines += [f"| `{config}` | {split} | {n} |" for split, n in counts.items()]
    first = next(iter(distiset), "default")
    lines += [
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{repo_id}", "{first}")',
        "```",
        "",
    ]
    if info.get("steps"):
        lines += ["## Pipeline", ""]
        lines += [f"- `{name}`" + (f" ({kind})" if kind else "") for name, kind in info["steps"]]
        lines += ["", _mermaid(info["steps"], info["edges"]), ""]
    return "\n".join(lines)


def _mermaid(steps: list[tuple[str, str]], edges: list[tuple[str, str]]) -> str:
    ids = {name: f"s{i}" for i, (name, _) in enumerate(steps)}
    lines = ["```mermaid", "graph TD"]
    for name, kind in steps:
        label = name + (f"<br/><i>{kind}</i>" if kind else "")
        lines.append(f'    {ids[name]}["{label.replace(chr(34), "#quot;")}"]')
    lines += [f"    {ids[a]} --> {ids[b]}" for a, b in edges if a in ids and b in ids]
    lines.append("```")
    return "\n".join(lines)


def _reproduce(raw_url: str, has_pipeline: bool, script_name: str | None) -> str:
    lines = ["## Reproduce", ""]
    if has_pipeline:
        lines += [
            "The `pipeline.yaml` of this repository describes the pipeline that made it.",
            "",
            "> **Review the file before you run it.** A pipeline file can only name",
            "> stillhouse step classes and routing functions (stillhouse refuses anything",
            "> else without running it), but the steps it names run with the arguments it",
            "> gives them, and they come from whatever packages you have installed. Read",
            "> it, or look at its steps and parameters first:",
            "",
            "```console",
            f'stillhouse pipeline info --config "{raw_url}/pipeline.yaml"',
            "```",
            "",
            "and, if you trust it, rerun it:",
            "",
            "```console",
            f'stillhouse pipeline run --config "{raw_url}/pipeline.yaml"',
            "```",
            "",
        ]
    if script_name:
        lines += [f"The script that was run is [`{script_name}`]({raw_url}/{script_name}).", ""]
    return "\n".join(lines) if len(lines) > 2 else ""


def _run_summary(summary: list[dict[str, Any]] | None) -> str:
    if not summary:
        return ""
    columns = list(dict.fromkeys(key for row in summary for key in row))
    lines = ["## Run summary", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in summary]
    return "\n".join(lines) + "\n"


def _examples(distiset: Distiset) -> str:
    lines = ["## Examples", ""]
    for config, splits in distiset.items():
        train = splits.get("train") if isinstance(splits, dict) else splits  # or a Dataset
        if train is None or len(train) == 0:
            continue
        example = json.dumps(_shorten(train[0]), indent=2, ensure_ascii=False, default=str)
        lines += [
            f"<details><summary>Configuration: {config}</summary>",
            "",
            "```json",
            example,
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines) if len(lines) > 2 else ""


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _MAX_EXAMPLE_CHARS:
        return value[:_MAX_EXAMPLE_CHARS] + f"... ({len(value)} characters)"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list):
        short = [_shorten(v) for v in value[:_MAX_EXAMPLE_ITEMS]]
        return short + ([f"... ({len(value)} items)"] if len(value) > _MAX_EXAMPLE_ITEMS else [])
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    return value


def _artifacts(distiset: Distiset) -> str:
    artifacts = distiset.artifacts
    if not artifacts:
        return ""
    lines = [
        "## Artifacts",
        "",
        "Files the steps saved, under `artifacts/` in this repository:",
        "",
    ]
    for step, files in artifacts.items():
        lines.append(f"- `{step}`: {len(files)} file(s)")
    return "\n".join(lines) + "\n"
