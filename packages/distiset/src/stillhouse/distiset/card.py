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
    info = _pipeline_info(pipeline_yaml)
    sections = [
        _summary(distiset, repo_id, info),
        _reproduce(raw_url, pipeline_yaml is not None, script_name, info.get("scripts"), repo_id),
        _run_summary(distiset, info),
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
    # Scripts the steps and routing functions are defined in (`type_info.file`): a file
    # read from a URL that names one is refused, so the card says how to get them.
    infos = [entry.get("type_info") for entry in spec.get("routing_batch_functions") or []
             if isinstance(entry, dict)]
    infos += [entry["step"].get("type_info") for entry in spec.get("steps") or []
              if isinstance(entry, dict) and isinstance(entry.get("step"), dict)]
    scripts = sorted({
        str(info["file"]).replace("\\", "/").rsplit("/", 1)[-1]
        for info in infos if isinstance(info, dict) and info.get("file")
    })
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
        "scripts": scripts,
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


def _reproduce(
    raw_url: str,
    has_pipeline: bool,
    script_name: str | None,
    scripts: list[str] | None = None,
    repo_id: str = "",
) -> str:
    lines = ["## Reproduce", ""]
    config = f"{raw_url}/pipeline.yaml"
    if has_pipeline and scripts:
        # stillhouse imports a script (`file:`) only from beside a local pipeline file.
        folder = repo_id.split("/")[-1] or "pipeline"
        config = f"{folder}/pipeline.yaml"
        names, plural = ", ".join(f"`{name}`" for name in scripts), "s" if len(scripts) > 1 else ""
        includes = " ".join(f'--include "{pattern}"'
                            for pattern in ["pipeline.yaml", "inline_data/*", *scripts])
        lines += [
            "The `pipeline.yaml` of this repository describes the pipeline that made it. Some",
            f"of its steps are defined in the script{plural} {names} (`file:` in `pipeline.yaml`),",
            "which stillhouse imports only from beside a local pipeline file. Download the",
            f"file, its `inline_data/` folder and the script{plural} into one folder:",
            "",
            "```console",
            f"hf download {repo_id} --repo-type dataset {includes} --local-dir {folder}",
            "```",
            "",
            "and in `pipeline.yaml` set each `file:` to the script's name (it says where the",
            "script was on the machine that ran it).",
        ]
        missing = [name for name in scripts if name != script_name]
        if missing:
            lines[-1] += (
                f" {', '.join(f'`{name}`' for name in missing)} "
                f"{'was' if len(missing) == 1 else 'were'} not uploaded here: get "
                f"{'it' if len(missing) == 1 else 'them'} from the dataset's authors."
            )
        lines.append("")
    elif has_pipeline:
        lines += ["The `pipeline.yaml` of this repository describes the pipeline that made it.", ""]
    if has_pipeline:
        lines += [
            "> **Review the file before you run it.** A pipeline file can only name",
            "> stillhouse step classes and routing functions (stillhouse refuses anything",
            "> else without running it), but the steps it names run with the arguments it",
            *([
                "> gives them, and they come from whatever packages you have installed and",
                "> the scripts it names. Read them, or look at its steps and parameters first:",
            ] if scripts else [
                "> gives them, and they come from whatever packages you have installed. Read",
                "> it, or look at its steps and parameters first:",
            ]),
            "",
            "```console",
            f'stillhouse pipeline info --config "{config}"',
            "```",
            "",
            "and, if you trust it, rerun it:",
            "",
            "```console",
            f'stillhouse pipeline run --config "{config}"',
            "```",
            "",
        ]
    if script_name:
        lines += [f"The script that was run is [`{script_name}`]({raw_url}/{script_name}).", ""]
    return "\n".join(lines) if len(lines) > 2 else ""


def _run_summary(distiset: Distiset, info: dict[str, Any]) -> str:
    """Per step: rows out, computed or cached, failed batches, time.

    A step whose results this run took whole from the cache released nothing: the engine
    reports the rows its store holds as its rows out. Where the store could not say (the
    count is then 0), its rows come from what was written instead (a leaf: its
    configuration's rows; a source step: the rows it is known to produce). What no stored
    result says (failed batches, time, a count nobody knows) is shown as a dash, never
    as 0."""
    summary = distiset.run_summary
    if not summary:
        return ""
    stored = _stored_rows(distiset, summary, info)
    reused = [row for row in summary if _reused(row)]
    lines = ["## Run summary", ""]
    if reused and len(reused) == len(summary):
        lines += [
            "This run computed nothing: every step's results came from the cache, where an "
            "earlier run of the same steps on the same inputs had stored them.",
            "",
        ]
    elif reused:
        lines += [
            "Steps marked *cached* took their results from the cache, where an earlier run "
            "had stored them; the others were computed in this run.",
            "",
        ]
    lines += ["| Step | Rows out | Results | Failed batches | Time (s) |", "|---|---:|---|---:|---:|"]
    unknown = False
    for row in summary:
        step = str(row.get("step", ""))
        status = str(row.get("status") or "").split(",")[0]  # "computed, 2 failed batches"
        if _reused(row):  # the store's counts; 0 when the store could not say
            rows, seconds = row.get("rows_out") or stored.get(step), None
            failed = row.get("failed_batches") or None  # recorded by the store that failed
        else:
            rows, failed = row.get("rows_out"), row.get("failed_batches")
            seconds = f"{float(row['seconds']):.2f}" if row.get("seconds") is not None else None
        unknown |= rows is None or failed is None
        cells = [f"`{step}`", _figure(rows), status, _figure(failed), _figure(seconds)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if unknown:
        lines += [
            "",
            "—: not known to this run, which reused the step's stored results without "
            "reading them again.",
        ]
    return "\n".join(lines) + "\n"


def _reused(row: dict[str, Any]) -> bool:
    """The step's results were taken whole from the cache: no batch went through this run."""
    return str(row.get("status")).split(",")[0] == "cached" and not row.get("batches")


def _figure(value: Any) -> str:
    return "—" if value is None else str(value)


def _stored_rows(
    distiset: Distiset, summary: list[dict[str, Any]], info: dict[str, Any]
) -> dict[str, int]:
    """Rows out per step, from what was stored: a leaf's rows are its configuration's; a
    source step (no predecessor in `pipeline.yaml`) has the total it was known to produce."""
    counts = {config: sum(splits.values()) for config, splits in distiset.row_counts().items()}
    steps = [name for name, _ in info.get("steps", [])]
    edges = info.get("edges", [])
    leaf_steps = dict(distiset.leaf_steps or {})
    leaves = [name for name in steps if name not in {source for source, _ in edges}]
    if not leaf_steps and list(counts) == ["default"] and len(leaves) == 1:
        leaf_steps = {"default": leaves[0]}  # one leaf is the configuration "default"
    rows = {leaf_steps.get(config, config): n for config, n in counts.items()}
    sources = set(steps) - {target for _, target in edges}
    for row in summary:
        total = row.get("total")
        if row.get("step") in sources and row["step"] not in rows and isinstance(total, int):
            rows[row["step"]] = total
    return rows


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
