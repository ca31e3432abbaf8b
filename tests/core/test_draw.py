"""Pictures of the DAG: mermaid text, SVG and PNG, all made locally."""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stillhouse.core import Pipeline, StepInput, StepOutput, sample_n_steps, step
from stillhouse.core.draw import draw_pipeline, mermaid
from stillhouse.core.errors import CycleError
from stillhouse.core.steps import CombineOutputs, KeepColumns, LoadDataFromDicts

SVG = "{http://www.w3.org/2000/svg}"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@step(inputs=["x"], outputs=["y"])
def Work(inputs: StepInput) -> StepOutput:
    yield inputs


@step(inputs=["y"], outputs=["total"], step_type="global")
def Total(inputs: StepInput) -> StepOutput:
    yield inputs


def routed_pipeline() -> Pipeline:
    with Pipeline(name="drawn", executor="sync") as pipeline:
        data = LoadDataFromDicts(name="data", data=[{"x": 1}], batch_size=8)
        left = Work(name="left", input_batch_size=4)
        right = Work(name="right", resources={"replicas": 3})
        data >> sample_n_steps(1) >> [left, right] >> CombineOutputs(name="combine")
        (
            pipeline.dag.get_step("combine")
            >> Total(name="total")
            >> KeepColumns(name="keep", columns=["total"])
        )
    return pipeline


def svg_texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return [element.text or "" for element in root.iter(f"{SVG}text")]


def test_mermaid_labels_nodes_with_class_name_batch_size_and_replicas() -> None:
    text = mermaid(routed_pipeline())
    assert text.startswith("flowchart LR\n")
    for name in ("data", "left", "right", "combine", "total", "keep"):
        assert name in text
    assert "LoadDataFromDicts<br/>data<br/>batch_size: 8<br/>replicas: 1" in text
    assert "Work<br/>left<br/>input_batch_size: 4" in text
    assert "right<br/>input_batch_size: 50<br/>replicas: 3" in text
    assert "Total<br/>total<br/>global" in text


def test_mermaid_labels_routed_edges_unless_asked_not_to() -> None:
    pipeline = routed_pipeline()
    labelled = mermaid(pipeline)
    assert labelled.count("-->|sample_n_steps(n=1)|") == 2
    assert labelled.count("-->") == 6
    plain = mermaid(pipeline, top_to_bottom=True, show_edge_labels=False)
    assert plain.startswith("flowchart TD\n")
    assert "sample_n_steps" not in plain and plain.count("-->") == 6


def test_draw_mmd_writes_the_mermaid_text(tmp_path: Path) -> None:
    pipeline = routed_pipeline()
    path = pipeline.draw(tmp_path / "pipeline.mmd")
    assert path == tmp_path / "pipeline.mmd"
    text = path.read_text()
    assert text.strip() == mermaid(pipeline)
    for name in pipeline.dag.step_names:
        assert name in text


@pytest.mark.parametrize("top_to_bottom", [False, True])
def test_draw_svg_is_valid_xml_naming_every_step(tmp_path: Path, top_to_bottom: bool) -> None:
    pipeline = routed_pipeline()
    path = pipeline.draw(tmp_path / "pipeline.svg", top_to_bottom=top_to_bottom)
    texts = svg_texts(path)
    for name in pipeline.dag.step_names:
        assert name in texts
    assert "CombineOutputs" in texts and "replicas: 3" in texts
    assert texts.count("sample_n_steps(n=1)") == 2
    root = ET.parse(path).getroot()
    assert len(root.findall(f"{SVG}g")) == len(pipeline.dag.step_names)
    assert len(root.findall(f"{SVG}line")) == 6


def test_svg_layout_follows_the_direction(tmp_path: Path) -> None:
    pipeline = routed_pipeline()
    wide = ET.parse(draw_pipeline(pipeline, tmp_path / "lr.svg")).getroot()
    tall = ET.parse(draw_pipeline(pipeline, tmp_path / "tb.svg", top_to_bottom=True)).getroot()
    assert float(wide.get("width")) > float(wide.get("height"))
    assert float(tall.get("height")) > float(tall.get("width"))


def test_svg_without_edge_labels(tmp_path: Path) -> None:
    path = routed_pipeline().draw(tmp_path / "plain.svg", show_edge_labels=False)
    assert "sample_n_steps(n=1)" not in svg_texts(path)


def test_an_empty_pipeline_draws(tmp_path: Path) -> None:
    empty = Pipeline(name="empty", executor="sync")
    ET.parse(empty.draw(tmp_path / "empty.svg"))
    assert mermaid(empty).startswith("flowchart LR")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is in the dev group; core alone lacks it")
def test_draw_png_draws_the_layout(tmp_path: Path) -> None:
    wide = routed_pipeline().draw(tmp_path / "wide.png")
    tall = routed_pipeline().draw(tmp_path / "tall.png", top_to_bottom=True)
    wide_w, wide_h = _png_size(wide)
    tall_w, tall_h = _png_size(tall)
    assert wide_w > wide_h and tall_h > tall_w  # the same layout as the SVG, either way round
    assert wide.stat().st_size > 5_000  # boxes and labels, not an empty canvas


@pytest.mark.skipif(HAS_MATPLOTLIB, reason="only without matplotlib (the core-alone environment)")
def test_draw_png_without_matplotlib_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.png"
    with pytest.raises(ImportError, match=r"matplotlib.*'\.svg' or '\.mmd'"):
        routed_pipeline().draw(path)
    assert not path.exists()


def test_draw_refuses_an_unknown_file_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'\.gif'.*'\.svg', '\.png', '\.mmd'"):
        routed_pipeline().draw(tmp_path / "pipeline.gif")


def test_drawing_a_cycle_names_it(tmp_path: Path) -> None:
    with Pipeline(name="cyclic", executor="sync") as pipeline:
        a, b = Work(name="a"), Work(name="b")
        LoadDataFromDicts(data=[{"x": 1}]) >> a >> b >> a
    with pytest.raises(CycleError, match=r"a >> b|b >> a"):
        pipeline.draw(tmp_path / "cyclic.svg")


def test_repr_markdown_is_a_mermaid_block() -> None:
    pipeline = routed_pipeline()
    assert pipeline._repr_markdown_() == f"```mermaid\n{mermaid(pipeline)}\n```"
