"""DataSampler: seeded few-shot samples, in batches, resumable at an offset."""

from __future__ import annotations

from stillhouse.core.testing import run_generator
from stillhouse.steps import DataSampler

DATA = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(6)]


def samples(step, **kwargs):
    return [row for batch in run_generator(step, **kwargs) for row in batch]


def test_samples_of_size_rows_column_by_column():
    sampler = DataSampler(data=DATA, size=3, samples=10, batch_size=4)
    batches = run_generator(sampler)
    assert [len(b) for b in batches] == [4, 4, 2]
    for row in (r for b in batches for r in b):
        assert set(row) == {"question", "answer"} and len(row["question"]) == 3
        # each drawn row keeps its question with its answer
        assert [q[1:] for q in row["question"]] == [a[1:] for a in row["answer"]]
    assert sampler.outputs == ["question", "answer"]


def test_seeded_same_draws_every_time_and_another_seed_differs():
    first = samples(DataSampler(data=DATA, samples=20))
    assert samples(DataSampler(data=DATA, samples=20)) == first
    assert samples(DataSampler(data=DATA, samples=20, seed=7)) != first


def test_resuming_at_an_offset_continues_the_same_draws():
    whole = samples(DataSampler(data=DATA, samples=9, batch_size=4))
    assert samples(DataSampler(data=DATA, samples=9, batch_size=4), offset=4) == whole[4:]
    assert samples(DataSampler(data=DATA, samples=9), offset=9) == []


def test_no_data_or_no_samples_yields_nothing():
    assert run_generator(DataSampler(data=[], samples=5)) == [[]]
    assert run_generator(DataSampler(data=DATA, samples=0)) == [[]]


def test_its_data_is_an_inline_data_field_kept_out_of_pipeline_files():
    sampler = DataSampler(data=DATA)
    assert set(sampler.signature_extra()) == {"data"}
    assert sampler.signature_extra()["data"].startswith("sha256:")
