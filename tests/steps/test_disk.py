"""LoadDataFromDisk over datasets and Distisets saved with `save_to_disk`."""

from __future__ import annotations

import fsspec
import pytest
from datasets import Dataset, DatasetDict

from stillhouse.core.errors import StepRuntimeError
from stillhouse.core.testing import run_generator
from stillhouse.steps import LoadDataFromDisk
from tests.steps.helpers import needs_full_install, run_loader

pytestmark = pytest.mark.timeout(120)

ROWS = [{"prompt": f"p{i}", "score": i / 2} for i in range(9)]


def rows_of(loader, **kwargs):
    return [row for batch in run_generator(loader, **kwargs) for row in batch]


def test_a_saved_dataset_in_batches(tmp_path):
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    loader = LoadDataFromDisk(dataset_path=str(tmp_path / "ds"), batch_size=4)
    assert [len(b) for b in run_generator(loader)] == [4, 4, 1]
    assert rows_of(loader) == ROWS
    assert loader.outputs == ["prompt", "score"]
    assert [r["score"] for r in rows_of(loader, offset=7)] == [3.5, 4.0]
    limited = LoadDataFromDisk(dataset_path=tmp_path / "ds", num_examples=2, keep_in_memory=True)
    assert rows_of(limited) == ROWS[:2]


def test_a_dataset_dict_loads_the_split_asked_for_or_its_only_one(tmp_path):
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:2])}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert rows_of(LoadDataFromDisk(dataset_path=str(tmp_path / "dd"), split="test")) == ROWS[:2]
    with pytest.raises(Exception, match=r"split None not found.*\['train', 'test'\]"):
        run_generator(LoadDataFromDisk(dataset_path=str(tmp_path / "dd")))
    DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "one"))
    assert rows_of(LoadDataFromDisk(dataset_path=str(tmp_path / "one"))) == ROWS


def save_distiset_layout(path, leaves):
    """What `Distiset.save_to_disk` writes: `<path>/<leaf>/` DatasetDicts with a "train" split."""
    for leaf, rows in leaves.items():
        DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(f"{path}/{leaf}")


def test_a_distiset_leaf(tmp_path):
    save_distiset_layout(tmp_path / "distiset", {"generate": ROWS, "score": ROWS[:3]})
    loader = LoadDataFromDisk(dataset_path=str(tmp_path / "distiset"), is_distiset=True,
                              config="score", split="train")
    assert rows_of(loader) == ROWS[:3]
    missing = LoadDataFromDisk(name="disk", dataset_path=str(tmp_path / "distiset"),
                               is_distiset=True)
    with pytest.raises(StepRuntimeError, match=r"'disk'.*'default' not found.*\['generate', 'score'\]"):
        missing.signature_extra()


def test_a_distiset_saved_by_stillhouse_distiset(tmp_path):
    pytest.importorskip("stillhouse.distiset", reason="saves a real Distiset")
    from stillhouse.distiset import Distiset

    distiset = Distiset({"default": DatasetDict({"train": Dataset.from_list(ROWS)})})
    distiset.save_to_disk(tmp_path / "saved")
    loader = LoadDataFromDisk(dataset_path=str(tmp_path / "saved"), is_distiset=True)
    assert rows_of(loader) == ROWS


def test_an_fsspec_url():
    fs = fsspec.filesystem("memory")
    Dataset.from_list(ROWS).save_to_disk("memory://steps-disk/ds")
    try:
        assert rows_of(LoadDataFromDisk(dataset_path="memory://steps-disk/ds")) == ROWS
    finally:
        fs.rm("/steps-disk", recursive=True)


def test_saving_again_changes_the_signature(tmp_path):
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    loader = LoadDataFromDisk(dataset_path=str(tmp_path / "ds"))
    first = loader.signature_extra()
    assert loader.signature_extra() == first
    Dataset.from_list(ROWS[:4]).save_to_disk(str(tmp_path / "ds"))
    assert loader.signature_extra() != first


def test_a_missing_path_is_an_error(tmp_path):
    loader = LoadDataFromDisk(name="disk", dataset_path=str(tmp_path / "nope"))
    with pytest.raises(StepRuntimeError, match=r"'disk'.*nope.*is not a folder"):
        loader.signature_extra()


@pytest.mark.integration
def test_a_dataset_saved_again_is_read_again(tmp_path):
    needs_full_install()
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))

    def loader():
        return LoadDataFromDisk(name="disk", dataset_path=str(tmp_path / "ds"), batch_size=4)

    cache = tmp_path / "cache"
    assert run_loader(loader, cache, executor="mp") == (ROWS, {"disk"})
    assert run_loader(loader, cache, executor="mp") == (ROWS, set())
    Dataset.from_list(ROWS[:3]).save_to_disk(str(tmp_path / "ds"))
    assert run_loader(loader, cache, executor="mp") == (ROWS[:3], {"disk"})


@pytest.mark.integration
def test_the_same_pipeline_run_again_reads_a_dataset_saved_again(tmp_path):
    needs_full_install()
    from stillhouse.core import Pipeline

    Dataset.from_list(ROWS[:3]).save_to_disk(str(tmp_path / "ds"))
    with Pipeline(name="rerun", cache_dir=str(tmp_path / "cache"), executor="mp") as pipeline:
        LoadDataFromDisk(name="disk", dataset_path=str(tmp_path / "ds"), batch_size=2)
    assert pipeline.run(progress=False)["default"]["train"].to_list() == ROWS[:3]
    Dataset.from_list(ROWS[3:]).save_to_disk(str(tmp_path / "ds"))
    assert pipeline.run(progress=False)["default"]["train"].to_list() == ROWS[3:]


def test_a_folder_save_to_disk_did_not_write_is_an_error_saying_what_it_holds(tmp_path):
    (tmp_path / "empty").mkdir()
    empty = LoadDataFromDisk(name="disk", dataset_path=str(tmp_path / "empty"))
    with pytest.raises(StepRuntimeError, match=r"'disk'.*empty.*is not a dataset saved with "
                                               r"`save_to_disk`.*It is empty"):
        empty.outputs  # noqa: B018  (what validation reads)
    with pytest.raises(StepRuntimeError, match=r"is not a dataset saved"):
        empty.signature_extra()
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "data.jsonl").write_text("{}\n")
    with pytest.raises(StepRuntimeError, match=r"It holds \['data\.jsonl'\]"):
        LoadDataFromDisk(dataset_path=str(tmp_path / "files")).signature_extra()
    save_distiset_layout(tmp_path / "distiset", {"generate": ROWS})
    with pytest.raises(StepRuntimeError, match=r"Distiset \(configurations \['generate'\]\): "
                                               r"set is_distiset=True"):
        LoadDataFromDisk(dataset_path=str(tmp_path / "distiset")).outputs  # noqa: B018
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(StepRuntimeError, match=r"holds no Distiset.*set is_distiset=False"):
        LoadDataFromDisk(dataset_path=str(tmp_path / "ds"), is_distiset=True).outputs  # noqa: B018


def test_a_damaged_saved_dataset_is_an_error_naming_step_and_path(tmp_path):
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "ds" / "state.json").write_text("{not json")
    loader = LoadDataFromDisk(name="disk", dataset_path=str(tmp_path / "ds"))
    with pytest.raises(StepRuntimeError, match=r"'disk'.*cannot read the dataset saved at .*ds.*"
                                               r"save_to_disk"):
        loader.outputs  # noqa: B018


def test_a_saved_dataset_loads_with_no_split_or_its_own_and_any_other_is_an_error(tmp_path):
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "plain"))
    wrong = LoadDataFromDisk(name="disk", dataset_path=str(tmp_path / "plain"), split="test")
    with pytest.raises(StepRuntimeError, match=r"'disk'.*split 'test' not found.*plain.*a single "
                                               r"Dataset saved without a split name.*split=None"):
        wrong.outputs  # noqa: B018  (what validation reads)
    Dataset.from_list(ROWS, split="train").save_to_disk(str(tmp_path / "named"))
    own = LoadDataFromDisk(dataset_path=str(tmp_path / "named"), split="train")
    assert rows_of(own) == ROWS
    other = LoadDataFromDisk(name="disk", dataset_path=str(tmp_path / "named"), split="test")
    with pytest.raises(StepRuntimeError, match=r"'disk'.*split 'test' not found.*of split 'train'.*"
                                               r"split=None or split='train'"):
        other.outputs  # noqa: B018


def test_a_distiset_leaf_saved_as_a_dataset(tmp_path):
    save_distiset_layout(tmp_path / "distiset", {"generate": ROWS})
    Dataset.from_list(ROWS[:3]).save_to_disk(str(tmp_path / "distiset" / "score"))
    loader = LoadDataFromDisk(dataset_path=str(tmp_path / "distiset"), is_distiset=True,
                              config="score")
    assert rows_of(loader) == ROWS[:3]
    missing = LoadDataFromDisk(name="disk", dataset_path=str(tmp_path / "distiset"), is_distiset=True)
    with pytest.raises(StepRuntimeError, match=r"'default' not found.*\['generate', 'score'\]"):
        missing.signature_extra()
    with pytest.raises(StepRuntimeError, match=r"Distiset \(configurations \['generate', 'score'\]\)"):
        LoadDataFromDisk(dataset_path=str(tmp_path / "distiset")).outputs  # noqa: B018
    # A DatasetDict's splits are saved Datasets too: it is not a Distiset of them.
    DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(StepRuntimeError, match=r"holds no Distiset.*set is_distiset=False"):
        LoadDataFromDisk(dataset_path=str(tmp_path / "dd"), is_distiset=True).outputs  # noqa: B018
