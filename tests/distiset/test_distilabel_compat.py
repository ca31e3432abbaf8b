"""A distilabel 1.5 script ports by changing its imports (issue 18), run and Distiset side.

Written from distilabel 1.5.3's documented behaviour; item numbers are the issue's.
`tests/resources/distilabel_distiset` was written by distilabel 1.5.3's own
`Distiset.save_to_disk` (see tests/resources/make_distilabel_distiset.py).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from stillhouse.core import Pipeline, routing_batch_function
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.distiset import Distiset
from tests.core.test_distilabel_compat import Generate

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
DISTILABEL_DISTISET = RESOURCES / "distilabel_distiset"

pytestmark = pytest.mark.timeout(180)

ROWS = [{"instruction": "a"}, {"instruction": "b"}, {"instruction": "c"}]


def run_generate(tmp_path: Path, **run_kwargs) -> tuple[Pipeline, Distiset]:
    with Pipeline(name="compat", executor="threaded", cache_dir=tmp_path / "cache") as pipeline:
        Generate(name="gen", input_batch_size=2)
    distiset = pipeline.run(dataset=ROWS, progress=False, **run_kwargs)
    return pipeline, distiset


# -- 1. self._logger in a run --------------------------------------------------------------


def test_1_step_logger_records_reach_pipeline_log(tmp_path: Path) -> None:
    _, distiset = run_generate(tmp_path)
    log = Path(distiset.log_filename_path).read_text()
    assert "stillhouse.step.gen: [gen r0] generating 2 rows" in log  # tagged with step and replica


# -- 2. run(dataset_batch_size=...) ----------------------------------------------------------


def test_2_dataset_batch_size_is_the_batch_size_of_the_dataset_step(tmp_path: Path) -> None:
    pipeline, distiset = run_generate(tmp_path, dataset_batch_size=1)
    assert pipeline.dag.get_step("load_dataset").batch_size == 1
    assert distiset["default"]["train"]["generation"] == ["A", "B", "C"]


# -- 3. artifacts land in the Distiset, on disk and on the Hub ----------------------------------


def test_3_artifacts_of_a_run_are_saved_as_distilabel_lays_them_out(tmp_path: Path) -> None:
    _, distiset = run_generate(tmp_path)
    files = sorted(Path(f).name for f in distiset.artifacts["gen"])
    assert files == ["metadata.json", "notes.txt"]
    distiset.save_to_disk(tmp_path / "saved")
    folder = tmp_path / "saved" / "artifacts" / "gen" / "notes"
    assert json.loads((folder / "metadata.json").read_text())["rows"] in (1, 2)
    assert (folder / "notes.txt").read_text().endswith("rows")
    loaded = Distiset.load_from_disk(tmp_path / "saved")
    assert sorted(Path(f).name for f in loaded.artifacts["gen"]) == files


# huggingface_hub's LFS upload posts raw bytes with `data=`, which httpx deprecates (as in
# test_hub.py): not ours to fix.
@pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"
)
def test_3_push_to_hub_uploads_artifacts_under_artifacts(tmp_path: Path, fake_hub) -> None:
    _, distiset = run_generate(tmp_path)
    distiset.push_to_hub("tester/artifacts", token="hf_x")
    paths = set(fake_hub.repos["tester/artifacts"].files)
    assert {"artifacts/gen/notes/notes.txt", "artifacts/gen/notes/metadata.json"} <= paths


# -- 6. save_to_disk switches and transform_columns_to_image ------------------------------------


def test_6_save_to_disk_writes_card_config_and_log_unless_told_not_to(tmp_path: Path) -> None:
    _, distiset = run_generate(tmp_path)
    distiset.save_to_disk(tmp_path / "all")
    assert {"README.md", "pipeline.yaml", "pipeline.log"} <= {p.name for p in (tmp_path / "all").iterdir()}
    assert "generation" in (tmp_path / "all" / "README.md").read_text()
    distiset.save_to_disk(
        tmp_path / "none", save_card=False, save_pipeline_config=False, save_pipeline_log=False
    )
    names = {p.name for p in (tmp_path / "none").iterdir()}
    assert names.isdisjoint({"README.md", "pipeline.yaml", "pipeline.log"})
    assert "default" in names


def _png_base64() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), color=(255, 0, 0)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_6_transform_columns_to_image_makes_image_columns(tmp_path: Path) -> None:
    encoded = _png_base64()
    distiset = Distiset(
        {
            "images": DatasetDict({"train": Dataset.from_list([{"image": encoded, "n": 1}])}),
            "plain": Dataset.from_list([{"image": f"data:image/png;base64,{encoded}"}]),
            "other": DatasetDict({"train": Dataset.from_list([{"text": "x"}])}),
        }
    )
    assert distiset.transform_columns_to_image("image") is distiset
    image = distiset["images"]["train"][0]["image"]
    assert (image.size, image.mode) == ((3, 2), "RGB")
    assert type(distiset["images"]["train"].features["image"]).__name__ == "Image"
    assert distiset["plain"][0]["image"].size == (3, 2)
    assert distiset["other"]["train"][0] == {"text": "x"}
    distiset.save_to_disk(tmp_path / "images", save_card=False)
    reloaded = Distiset.load_from_disk(tmp_path / "images")
    assert reloaded["images"]["train"][0]["image"].size == (3, 2)


# -- 9. one routing function used in two places, run ----------------------------------------------


@routing_batch_function
def first_branch(steps: list[str]) -> list[str]:
    return steps[:1]


def test_9_a_routing_function_used_twice_routes_both_places(tmp_path: Path) -> None:
    with Pipeline(name="reuse", executor="threaded", cache_dir=tmp_path) as pipeline:
        load = LoadDataFromDicts(name="load", data=ROWS)
        a, b, c, d = (Generate(name=n) for n in "abcd")
        join = Generate(name="join", input_mappings={"instruction": "generation"})
        join2 = Generate(name="join2", input_mappings={"instruction": "generation"})
        load >> first_branch >> [a, b] >> join >> first_branch >> [c, d] >> join2
    distiset = pipeline.run(progress=False)
    assert distiset["default"]["train"]["generation"] == ["A", "B", "C"]


# -- 12. values that are Datasets -----------------------------------------------------------------


def test_12_dataset_values_split_save_and_load(tmp_path: Path) -> None:
    distiset = Distiset({"leaf": Dataset.from_list([{"i": i} for i in range(10)])})
    distiset.save_to_disk(tmp_path / "plain", save_card=False)
    loaded = Distiset.load_from_disk(tmp_path / "plain")
    assert isinstance(loaded["leaf"], Dataset)
    assert loaded["leaf"]["i"] == list(range(10))
    split = loaded.train_test_split(train_size=0.8, seed=0)
    assert split.row_counts() == {"leaf": {"train": 8, "test": 2}}
    split.save_to_disk(tmp_path / "split")
    assert Distiset.load_from_disk(tmp_path / "split").row_counts() == split.row_counts()


# -- 13. a Distiset saved by distilabel 1.5.3 -------------------------------------------------------


def test_13_a_distiset_saved_by_distilabel_loads(tmp_path: Path) -> None:
    copy = tmp_path / "from_distilabel"
    shutil.copytree(DISTILABEL_DISTISET, copy)
    distiset = Distiset.load_from_disk(copy)
    assert sorted(distiset) == ["counter", "length"]
    assert distiset["counter"]["train"]["upper"] == ["A", "BB", "CCC"]
    assert distiset["length"]["train"]["length"] == [1, 2, 3]
    assert Path(distiset.pipeline_path) == copy / "distiset_configs" / "pipeline.yaml"
    assert Path(distiset.log_filename_path) == copy / "distiset_configs" / "pipeline.log"
    counts = {Path(f).name for f in distiset.artifacts["counter"]}
    assert counts == {"counts.json", "metadata.json"}
    # And it saves again in stillhouse's layout, with everything carried over.
    distiset.save_to_disk(tmp_path / "ours")
    again = Distiset.load_from_disk(tmp_path / "ours")
    assert again.row_counts() == distiset.row_counts()
    assert "distilabel:" in Path(again.pipeline_path).read_text()
    assert (tmp_path / "ours" / "artifacts" / "counter" / "counts" / "counts.json").exists()
