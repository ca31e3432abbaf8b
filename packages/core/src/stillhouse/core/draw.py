"""Pictures of a pipeline's DAG, made locally: mermaid text, SVG or PNG.

distilabel sends the graph to the mermaid.ink web service; we never leave the
machine. SVG is laid out here from the DAG's topological generations (boxes and
straight arrows, no graphviz); PNG draws the same layout with matplotlib when it
is installed. Nothing here validates or runs a pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

import networkx as nx

from stillhouse.core.errors import CycleError

if TYPE_CHECKING:
    from stillhouse.core.dag import DAG
    from stillhouse.core.pipeline import Pipeline
    from stillhouse.core.routing import RoutingBatchFunction
    from stillhouse.core.step import _Step

FORMATS = (".svg", ".png", ".mmd")

# Layout metrics in pixels (SVG user units); text width is estimated, not measured,
# so boxes are sized generously for a monospace-ish 13px font.
_CHAR_WIDTH = 7.8
_LINE_HEIGHT = 18
_PADDING = 12
_LAYER_GAP = 90
_SIBLING_GAP = 30
_MARGIN = 20
_FONT_SIZE = 13
_LABEL_CHAR_WIDTH = 6.6  # edge labels use an 11px font

_FILL = {"generator": "#e3f2fd", "global": "#fff3e0", "normal": "#f1f8e9"}
_STROKE = {"generator": "#1565c0", "global": "#ef6c00", "normal": "#558b2f"}


def _kind(step: _Step) -> str:
    return "generator" if step.is_generator else "global" if step.is_global else "normal"


def _node_lines(step: _Step) -> list[str]:
    """What a box shows: class, name, batch size and replicas."""
    if step.is_generator:
        batch = f"batch_size: {step.batch_size}"
    elif step.is_global:
        batch = "global: all rows at once"
    else:
        batch = f"input_batch_size: {step.input_batch_size}"
    return [type(step).__name__, str(step.name), batch, f"replicas: {step.resources.replicas}"]


def _routing_label(routing: RoutingBatchFunction) -> str:
    kwargs = routing.dump()["type_info"]["kwargs"]
    arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
    return f"{routing.name}({arguments})" if kwargs else routing.name


def _edge_labels(dag: DAG) -> dict[tuple[str, str], str]:
    return {
        (source, target): _routing_label(routing)
        for source, routing in dag.routing.items()
        for target in dag.successors(source)
    }


def _layers(dag: DAG) -> list[list[str]]:
    position = {name: i for i, name in enumerate(dag.step_names)}
    try:
        generations = list(nx.topological_generations(dag.graph))
    except nx.NetworkXUnfeasible:
        cycle = " >> ".join(edge[0] for edge in nx.find_cycle(dag.graph))
        raise CycleError(
            f"Cannot draw the pipeline: its steps form a cycle ({cycle}). Remove one of "
            "these connections."
        ) from None
    return [sorted(layer, key=position.__getitem__) for layer in generations]


# -- mermaid ------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("|", "#124;")


def mermaid(pipeline: Pipeline, top_to_bottom: bool = False, show_edge_labels: bool = True) -> str:
    """The DAG as a mermaid flowchart; routed edges are labelled with the routing function."""
    dag = pipeline.dag
    ids = {name: f"s{i}" for i, name in enumerate(dag.step_names)}
    labels = _edge_labels(dag) if show_edge_labels else {}
    lines = [f"flowchart {'TD' if top_to_bottom else 'LR'}"]
    for name, node in ids.items():
        step = dag.get_step(name)
        text = "<br/>".join(_mermaid_text(line) for line in _node_lines(step))
        lines.append(f'    {node}["{text}"]:::{_kind(step)}')
    for source, target in dag.graph.edges:
        label = labels.get((source, target))
        arrow = f"-->|{_mermaid_text(label)}|" if label else "-->"
        lines.append(f"    {ids[source]} {arrow} {ids[target]}")
    for kind in ("generator", "normal", "global"):
        lines.append(
            f"    classDef {kind} fill:{_FILL[kind]},stroke:{_STROKE[kind]},text-align:center;"
        )
    return "\n".join(lines)


# -- layout shared by SVG and PNG ----------------------------------------------------


@dataclass
class _Box:
    x: float
    y: float
    width: float
    height: float
    lines: list[str]
    kind: str

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.width / 2, self.y + self.height / 2


@dataclass
class _Layout:
    width: float
    height: float
    boxes: dict[str, _Box]
    edges: list[tuple[tuple[float, float], tuple[float, float], str | None]]


def _layout(pipeline: Pipeline, top_to_bottom: bool, show_edge_labels: bool) -> _Layout:
    """Layers along the main axis (left to right by default), siblings centred across it."""
    dag = pipeline.dag
    sizes: dict[str, tuple[float, float, list[str], str]] = {}
    for name in dag.step_names:
        step = dag.get_step(name)
        lines = _node_lines(step)
        width = max(len(line) for line in lines) * _CHAR_WIDTH + 2 * _PADDING
        sizes[name] = (width, len(lines) * _LINE_HEIGHT + 2 * _PADDING, lines, _kind(step))
    layers = _layers(dag)
    labels = _edge_labels(dag) if show_edge_labels else {}
    gap = float(_LAYER_GAP)
    if labels and not top_to_bottom:  # a label sits between two layers: make room for it
        gap = max(gap, max(len(label) for label in labels.values()) * _LABEL_CHAR_WIDTH + 30)

    def along(name: str) -> float:  # extent on the main axis
        return sizes[name][1] if top_to_bottom else sizes[name][0]

    def across(name: str) -> float:
        return sizes[name][0] if top_to_bottom else sizes[name][1]

    spans = [sum(across(n) for n in layer) + _SIBLING_GAP * (len(layer) - 1) for layer in layers]
    widest = max(spans, default=0.0)
    boxes: dict[str, _Box] = {}
    main = float(_MARGIN)
    for layer, span in zip(layers, spans, strict=True):
        cross = _MARGIN + (widest - span) / 2
        depth = max(along(n) for n in layer)
        for name in layer:
            width, height, lines, kind = sizes[name]
            offset = (depth - along(name)) / 2
            x, y = (cross, main + offset) if top_to_bottom else (main + offset, cross)
            boxes[name] = _Box(x, y, width, height, lines, kind)
            cross += across(name) + _SIBLING_GAP
        main += depth + gap
    main_extent = main - gap + _MARGIN if layers else 2 * _MARGIN
    cross_extent = widest + 2 * _MARGIN
    width, height = (cross_extent, main_extent) if top_to_bottom else (main_extent, cross_extent)

    edges = []
    for source, target in dag.graph.edges:
        a, b = boxes[source], boxes[target]
        if top_to_bottom:
            start, end = (a.center[0], a.y + a.height), (b.center[0], b.y)
        else:
            start, end = (a.x + a.width, a.center[1]), (b.x, b.center[1])
        edges.append((start, end, labels.get((source, target))))
    return _Layout(width, height, boxes, edges)


def _label_point(start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    # Nearer the target than the middle: edges fanning out of one routing step are
    # farther apart there, so their labels do not overlap.
    return start[0] + 0.7 * (end[0] - start[0]), start[1] + 0.7 * (end[1] - start[1])


# -- SVG ------------------------------------------------------------------------------


def svg(pipeline: Pipeline, top_to_bottom: bool = False, show_edge_labels: bool = True) -> str:
    """The DAG as a standalone SVG document."""
    layout = _layout(pipeline, top_to_bottom, show_edge_labels)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{layout.width:.0f}" '
        f'height="{layout.height:.0f}" viewBox="0 0 {layout.width:.0f} {layout.height:.0f}" '
        f'font-family="Helvetica, Arial, sans-serif" font-size="{_FONT_SIZE}">',
        f"<title>{escape(pipeline.name)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#444"/></marker></defs>',
        f'<rect width="{layout.width:.0f}" height="{layout.height:.0f}" fill="white"/>',
    ]
    for (x1, y1), (x2, y2), _ in layout.edges:
        out.append(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#444" '
            'stroke-width="1.5" marker-end="url(#arrow)"/>'
        )
    for name, box in layout.boxes.items():
        out.append(f'<g class="step {box.kind}" id="{escape(name, {chr(34): "&quot;"})}">')
        out.append(
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.width:.1f}" '
            f'height="{box.height:.1f}" rx="6" fill="{_FILL[box.kind]}" '
            f'stroke="{_STROKE[box.kind]}" stroke-width="1.5"/>'
        )
        cx = box.center[0]
        for i, line in enumerate(box.lines):
            y = box.y + _PADDING + (i + 0.75) * _LINE_HEIGHT
            weight = ' font-weight="bold"' if i == 0 else ""
            out.append(
                f'<text x="{cx:.1f}" y="{y:.1f}" text-anchor="middle"{weight}>{escape(line)}</text>'
            )
        out.append("</g>")
    for (x1, y1), (x2, y2), label in layout.edges:
        if not label:
            continue
        mx, my = _label_point((x1, y1), (x2, y2))
        width = len(label) * _LABEL_CHAR_WIDTH + 8
        out.append(
            f'<rect x="{mx - width / 2:.1f}" y="{my - 9:.1f}" width="{width:.1f}" height="16" '
            'fill="white" opacity="0.9"/>'
        )
        out.append(
            f'<text x="{mx:.1f}" y="{my + 3:.1f}" text-anchor="middle" font-size="11" '
            f'font-style="italic" fill="#333">{escape(label)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- PNG ------------------------------------------------------------------------------


def _png(pipeline: Pipeline, path: Path, top_to_bottom: bool, show_edge_labels: bool) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyBboxPatch
    except ImportError as exc:
        raise ImportError(
            f"Drawing {str(path)!r} as PNG needs matplotlib, which is not installed. "
            "Install it (`pip install matplotlib`), or draw to a '.svg' or '.mmd' file instead."
        ) from exc
    layout = _layout(pipeline, top_to_bottom, show_edge_labels)
    dpi = 100
    # A figure object of our own (not pyplot) leaves the user's global backend alone.
    figure = Figure(figsize=(layout.width / dpi, layout.height / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, layout.width)
    axes.set_ylim(layout.height, 0)
    axes.axis("off")
    points = 72 / dpi  # font sizes are in points, the layout in pixels
    for start, end, label in layout.edges:
        arrow: dict[str, Any] = {"arrowstyle": "-|>", "color": "#444", "lw": 1.2}
        axes.annotate("", xy=end, xytext=start, arrowprops=arrow)
        if label:
            mx, my = _label_point(start, end)
            axes.text(
                mx,
                my,
                label,
                ha="center",
                va="center",
                fontsize=11 * points,
                style="italic",
                backgroundcolor="white",
            )
    for box in layout.boxes.values():
        axes.add_patch(
            FancyBboxPatch(
                (box.x, box.y),
                box.width,
                box.height,
                boxstyle="round,pad=0,rounding_size=6",
                facecolor=_FILL[box.kind],
                edgecolor=_STROKE[box.kind],
                linewidth=1.2,
            )
        )
        for i, line in enumerate(box.lines):
            y = box.y + _PADDING + (i + 0.5) * _LINE_HEIGHT
            axes.text(
                box.center[0],
                y,
                line,
                ha="center",
                va="center",
                fontsize=_FONT_SIZE * points,
                weight="bold" if i == 0 else "normal",
            )
    figure.savefig(str(path), format="png", dpi=dpi, facecolor="white")


# -- entry point ----------------------------------------------------------------------


def draw_pipeline(
    pipeline: Pipeline, path: Path | str, top_to_bottom: bool = False, show_edge_labels: bool = True
) -> Path:
    """Write the picture of `pipeline` to `path`; its suffix picks the format."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mmd":
        path.write_text(mermaid(pipeline, top_to_bottom, show_edge_labels) + "\n", encoding="utf-8")
    elif suffix == ".svg":
        path.write_text(svg(pipeline, top_to_bottom, show_edge_labels), encoding="utf-8")
    elif suffix == ".png":
        _png(pipeline, path, top_to_bottom, show_edge_labels)
    else:
        raise ValueError(
            f"Cannot draw to {str(path)!r}: unknown file type {suffix or '(none)'!r}. "
            f"Use one of {', '.join(map(repr, FORMATS))}."
        )
    return path
