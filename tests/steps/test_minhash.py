"""MinHashDedup on small texts with known near-duplicates."""

from __future__ import annotations

import pytest

from stillhouse.core.testing import run_step
from stillhouse.steps import MinHashDedup
from stillhouse.steps.minhash import tokenize_on_ngrams, tokenize_on_words
from tests.steps.helpers import needs_full_install

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank today.",   # 0 kept
    "A completely different sentence about databases and query planners.",      # 1 kept
    "The quick brown fox jumps over the lazy dog near the river bank today.",   # 2 = 0
    "The quick brown fox jumps over the lazy dog near the river bank today!",   # 3 ~ 0
    "Another unrelated line, this one on gardening and tomato plants.",         # 4 kept
    "a completely different sentence about databases and query planners.",     # 5 ~ 1
]


def keep(step, texts=TEXTS):
    return [row["keep_row_after_minhash_filtering"] for row in run_step(step, [{"text": t} for t in texts])]


def test_exact_duplicates_are_flagged_and_the_first_is_kept():
    assert keep(MinHashDedup()) == [True, True, False, True, True, True]


def test_near_duplicates_with_character_ngrams_and_a_lower_threshold():
    assert keep(MinHashDedup(tokenizer="ngrams", n=3, threshold=0.7)) == [
        True, True, False, False, True, False,
    ]


def test_disk_storage_agrees_with_dict_storage():
    for tokenizer in ("words", "ngrams"):
        dict_keep = keep(MinHashDedup(tokenizer=tokenizer, threshold=0.7))
        assert keep(MinHashDedup(tokenizer=tokenizer, threshold=0.7, storage="disk")) == dict_keep


def test_deterministic_for_a_seed():
    texts = [f"item number {i % 7} with some shared words" for i in range(30)]
    assert keep(MinHashDedup(seed=3), texts) == keep(MinHashDedup(seed=3), texts)
    assert keep(MinHashDedup(), texts) == [i < 7 for i in range(30)]


def test_tokenizers():
    assert tokenize_on_words(["Hello, world!"]) == [{b"Hello", b",", b"world", b"!"}]
    assert tokenize_on_ngrams(["abcd"], n=3) == [{b"abc", b"bcd"}]
    assert tokenize_on_ngrams(["ab"], n=3) == [{b"ab"}]


def test_is_a_global_step_reading_text():
    step = MinHashDedup()
    assert step.is_global and step.inputs == ["text"]
    assert step.outputs == ["keep_row_after_minhash_filtering"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_in_a_pipeline(tmp_path):
    needs_full_install()
    from stillhouse.core import Pipeline
    from stillhouse.core.steps import LoadDataFromDicts

    with Pipeline(name="dedup", cache_dir=str(tmp_path), executor="threaded") as pipeline:
        LoadDataFromDicts(data=[{"text": t} for t in TEXTS], batch_size=2) >> MinHashDedup()
    rows = pipeline.run(progress=False)["default"]["train"].to_list()
    assert [r["keep_row_after_minhash_filtering"] for r in rows] == keep(MinHashDedup())
