"""The one rule deciding what a run does with a step's stored outputs.

`decide` is used by the local store (`store.py`), the remote store (`remote.py`) and
`stillhouse cache explain` (`cli.py`), so what `explain` prints is what a run does.
Outputs are reused only when the signature that wrote them equals the live step's,
they were made from the very outputs (generations) the live predecessors have, and,
once finished, the store still holds every batch and row it recorded when it
finished. Anything else is recomputed; an unfinished store with the same identity is
resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

FORMAT = 4
"""Version of the step-store layout (`meta.json`, `batches.log`). Stores of an older
version are recomputed, never read. 3: large columns are blobs shared along the graph;
4: a log starts with the identity of its store (`records.IDENTITY`)."""

Action = Literal["reuse", "resume", "recompute"]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    damaged: bool = False
    """The store disagrees with its own record (a warning names the file)."""


@dataclass(frozen=True, slots=True)
class Holdings:
    """What a store's log holds, counted from its record headers."""

    batches: int | None  # None: not counted (a local log is counted when it is read)
    rows: int | None
    size: int | None = None


def decide(
    meta: dict[str, Any] | None,
    *,
    signature: str,
    predecessors: dict[str, str],
    batching: int | None,
    keyed: bool,
    fresh: str | None = None,
    holdings: Any = None,
) -> Decision:
    """What to do with a store whose `meta.json` is `meta` (None: no store).

    `keyed`: the step is replayed batch by batch even once finished (it sits inside
    routed branches), so its batches are only reusable if cut with the same size.
    `fresh`: why the run must not reuse this step (use_cache=False), if it must not.
    `holdings`: a callable returning the `Holdings` of the store's log (or None when
    the log is missing), called only for a finished store."""
    if fresh is not None:
        return Decision("recompute", fresh)
    if meta is None:
        return Decision("recompute", "no stored outputs")
    if meta.get("format") != FORMAT:
        return Decision("recompute", f"stored by another version of stillhouse (format {meta.get('format')!r})")
    if meta.get("signature") != signature:
        return Decision("recompute", "its signature changed")
    if meta.get("predecessors") != predecessors:
        return Decision("recompute", "a step before it was recomputed since its outputs were stored")
    finished = bool(meta.get("finished"))
    if keyed and meta.get("batching") != batching:
        state = "finished (inside routed branches)" if finished else "unfinished"
        return Decision(
            "recompute",
            f"its {state} outputs were made with input_batch_size={meta.get('batching')}, now {batching}",
        )
    if not finished:
        if meta.get("batching") != batching:
            return Decision(
                "recompute",
                f"its unfinished outputs were made with input_batch_size={meta.get('batching')}, now {batching}",
            )
        return Decision("resume", "stored outputs are not finished")
    problem = _disagreement(meta, holdings() if holdings is not None else None)
    if problem is not None:
        return Decision("recompute", problem, damaged=True)
    return Decision("reuse", "finished with the same signature")


def _disagreement(meta: dict[str, Any], found: Holdings | None) -> str | None:
    expected = (meta.get("batches"), meta.get("rows"))
    if None in expected:
        return "it does not record how many batches and rows it holds"
    if found is None:
        return f"its checkpoint log is missing (it recorded {expected[0]} batches)"
    if found.batches is not None and (found.batches, found.rows) != expected:
        return (
            f"its checkpoint log holds {found.batches} batches and {found.rows} rows, but it "
            f"recorded {expected[0]} batches and {expected[1]} rows when it finished"
        )
    size = meta.get("log_bytes")
    if found.size is not None and size is not None and found.size != size:
        return f"its checkpoint log is {found.size} bytes long, but it recorded {size} bytes"
    return None
