"""LoadDataFromHub against a Hub served on 127.0.0.1 (see conftest.py): real
`huggingface_hub` and `datasets` requests, the commit sha pinned in the signature."""

from __future__ import annotations

import pytest

from stillhouse.core.errors import StepRuntimeError
from stillhouse.core.testing import run_generator
from stillhouse.steps import LoadDataFromHub
from tests.steps.conftest import parquet_bytes
from tests.steps.helpers import needs_full_install, run_loader

pytestmark = pytest.mark.timeout(120)

ROWS = [{"instruction": f"question {i}", "id": i} for i in range(10)]


def publish(hub, rows=ROWS, repo="tester/mini"):
    return hub.publish(repo, {
        "README.md": b"---\nlicense: mit\n---\n# mini\n",
        "data/train-00000-of-00001.parquet": parquet_bytes(rows),
        "data/test-00000-of-00001.parquet": parquet_bytes(rows[:3]),
    })


def dataset_requests_unhandled(hub):
    return [r for r in hub.unhandled if "/datasets/" in r]


@pytest.mark.parametrize("streaming", [False, True])
def test_loads_a_split_in_batches(hub, streaming):
    publish(hub)
    loader = LoadDataFromHub(repo_id="tester/mini", split="train", batch_size=4, streaming=streaming)
    batches = run_generator(loader)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [row for b in batches for row in b] == ROWS
    assert loader.outputs == ["instruction", "id"]
    assert not dataset_requests_unhandled(hub)


def test_split_num_examples_and_offset(hub):
    publish(hub)
    test_split = LoadDataFromHub(repo_id="tester/mini", split="test", batch_size=2)
    assert [r["id"] for b in run_generator(test_split) for r in b] == [0, 1, 2]
    limited = LoadDataFromHub(repo_id="tester/mini", num_examples=5, batch_size=2, streaming=True)
    assert [[r["id"] for r in b] for b in run_generator(limited)] == [[0, 1], [2, 3], [4]]
    resumed = LoadDataFromHub(repo_id="tester/mini", batch_size=4)
    assert [r["id"] for b in run_generator(resumed, offset=8) for r in b] == [8, 9]


def test_the_commit_sha_is_in_the_signature_and_is_what_loads(hub):
    first = publish(hub)
    loader = LoadDataFromHub(repo_id="tester/mini", batch_size=50)
    assert loader.signature_extra()["revision"] == first
    second = publish(hub, [{"instruction": "new", "id": 99}])
    assert second != first
    assert loader.signature_extra()["revision"] == second
    assert run_generator(loader) == [[{"instruction": "new", "id": 99}]]
    requested = [r for r in hub.requests if "/resolve/" in r]
    assert requested and all(second in r for r in requested if r.startswith("GET /datasets"))


def test_an_unknown_repo_is_an_error_naming_step_and_repo(hub):
    loader = LoadDataFromHub(name="hub_loader", repo_id="tester/missing")
    with pytest.raises(StepRuntimeError, match=r"'hub_loader'.*'tester/missing'"):
        loader.signature_extra()


def test_repo_id_is_a_required_runtime_parameter():
    assert LoadDataFromHub().missing_runtime_parameters() == ["repo_id"]


@pytest.mark.integration
@pytest.mark.parametrize("executor", ["threaded", "mp"])
def test_an_updated_dataset_is_not_answered_from_the_cache(hub, tmp_path, executor):
    needs_full_install()
    publish(hub)

    def loader():
        return LoadDataFromHub(name="hub", repo_id="tester/mini", batch_size=4)

    rows, computed = run_loader(loader, tmp_path, executor)
    assert rows == ROWS and computed == {"hub"}
    rows, computed = run_loader(loader, tmp_path, executor)
    assert rows == ROWS and computed == set()  # same commit: from the cache
    publish(hub, [*ROWS[:2], {"instruction": "changed", "id": 7}])
    rows, computed = run_loader(loader, tmp_path, executor)
    assert [r["instruction"] for r in rows] == ["question 0", "question 1", "changed"]
    assert computed == {"hub"}


def branch_asks(hub, repo="tester/mini"):
    """Requests asking which commit the repository's default branch is at."""
    return [r for r in hub.requests if r == f"GET /api/datasets/{repo}"]


@pytest.mark.integration
def test_a_run_asks_for_the_commit_once_and_loads_the_commit_it_validated(hub, tmp_path):
    needs_full_install()
    publish(hub)
    landed = []

    def a_commit_lands_after_each_ask(repo):  # a busy repository
        landed.append(hub.commit(repo, {"data/train.parquet": parquet_bytes(
            [{"instruction": f"commit {len(landed)}", "id": -1}])}))

    hub.after_branch_info = a_commit_lands_after_each_ask
    rows, computed = run_loader(lambda: LoadDataFromHub(name="hub", repo_id="tester/mini"), tmp_path)
    # Validation (columns) and the signature share one answer: the commit the run loads.
    assert len(branch_asks(hub)) == 1 and len(landed) == 1
    assert rows == ROWS and computed == {"hub"}
    rows, computed = run_loader(lambda: LoadDataFromHub(name="hub", repo_id="tester/mini"), tmp_path)
    assert len(branch_asks(hub)) == 2  # every run asks again, and sees the new commit
    assert rows == [{"instruction": "commit 0", "id": -1}] and computed == {"hub"}


def test_reading_the_columns_asks_for_the_commit_once(hub):
    publish(hub)
    assert LoadDataFromHub(repo_id="tester/mini").outputs == ["instruction", "id"]
    assert len(branch_asks(hub)) == 1


def test_a_config_and_an_explicit_revision(hub):
    sha = hub.publish("tester/configs", {
        "README.md": (
            b"---\nconfigs:\n"
            b"- config_name: main\n  data_files:\n  - split: train\n    path: main/*.parquet\n"
            b"- config_name: extra\n  data_files:\n  - split: train\n    path: extra/*.parquet\n"
            b"---\n"
        ),
        "main/train-0.parquet": parquet_bytes(ROWS[:2]),
        "extra/train-0.parquet": parquet_bytes([{"other": "x"}]),
    })
    extra = LoadDataFromHub(repo_id="tester/configs", config="extra", revision=sha)
    assert run_generator(extra) == [[{"other": "x"}]]
    assert extra.outputs == ["other"]
    assert extra.signature_extra()["revision"] == sha
    main = LoadDataFromHub(repo_id="tester/configs", config="main", streaming=True)
    assert [r for b in run_generator(main) for r in b] == ROWS[:2]


def test_validation_reads_the_columns_of_the_commit_the_run_will_load(hub):
    publish(hub, [{"prompt": "p0"}])
    loader = LoadDataFromHub(repo_id="tester/mini")
    loader.signature_extra()  # an earlier run pinned that commit
    assert loader.outputs == ["prompt"]
    publish(hub, [{"instruction": "i0"}])  # a new commit renames the column
    assert loader.outputs == ["instruction"]


def test_a_commit_pinned_for_another_revision_is_not_loaded(hub):
    publish(hub)
    loader = LoadDataFromHub(repo_id="tester/mini", batch_size=50)
    loader.signature_extra()
    second = publish(hub, [{"instruction": "new", "id": 99}])
    loader.revision = second  # set without resolving it (as a dry run would)
    assert run_generator(loader) == [[{"instruction": "new", "id": 99}]]


@pytest.mark.integration
def test_the_same_pipeline_adapted_to_a_renamed_column_validates_and_runs(hub, tmp_path):
    needs_full_install()
    from stillhouse.core import Pipeline
    from stillhouse.core.steps import KeepColumns

    publish(hub, [{"prompt": f"p{i}"} for i in range(3)])
    with Pipeline(name="renamed", cache_dir=str(tmp_path / "cache")) as pipeline:
        loader = LoadDataFromHub(name="hub", repo_id="tester/mini", batch_size=2)
    assert pipeline.run(progress=False)["default"]["train"].to_list() == [
        {"prompt": f"p{i}"} for i in range(3)
    ]
    publish(hub, [{"instruction": f"i{i}", "id": i} for i in range(3)])
    with pipeline:  # the user follows the dataset's new column
        loader >> KeepColumns(name="keep", columns=["instruction"])
    assert pipeline.run(progress=False)["default"]["train"].to_list() == [
        {"instruction": f"i{i}"} for i in range(3)
    ]


def test_a_sliced_split_loads_its_slice_without_streaming(hub):
    publish(hub)
    first = LoadDataFromHub(repo_id="tester/mini", split="train[:5]", batch_size=50)
    assert first.outputs == ["instruction", "id"]  # validation: the columns of "train"
    assert [r["id"] for b in run_generator(first) for r in b] == [0, 1, 2, 3, 4]
    half = LoadDataFromHub(repo_id="tester/mini", split="train[50%:]", batch_size=50)
    assert [r["id"] for b in run_generator(half) for r in b] == [5, 6, 7, 8, 9]
    both = LoadDataFromHub(repo_id="tester/mini", split="train[:2]+test[:1]", batch_size=50)
    assert both.outputs == ["instruction", "id"]
    assert [r["id"] for b in run_generator(both) for r in b] == [0, 1, 0]
    streamed = LoadDataFromHub(name="hub", repo_id="tester/mini", split="train[:5]", streaming=True)
    with pytest.raises(StepRuntimeError, match=r"'hub'.*split 'train\[:5\]' takes a slice.*"
                                               r"streaming=False.*num_examples="):
        streamed.outputs  # noqa: B018  (what validation reads)
