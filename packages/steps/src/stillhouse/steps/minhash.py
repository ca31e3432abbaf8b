"""`MinHashDedup`: flags near-duplicate texts with MinHash signatures and LSH.

A global step: it sees every row at once, in input order, so the first of a group
of near-duplicates is kept and the others flagged, exactly and deterministically,
also after a resume (a streaming step would lose its index with its worker). The
index holds one signature per kept row: in memory (`storage="dict"`), or in a
SQLite file in a temporary folder (`storage="disk"`), for more rows than fit.
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr

from stillhouse.core import GlobalStep, StepInput, StepOutput

OUTPUT = "keep_row_after_minhash_filtering"
_WORD = re.compile(r"\w+|[^\w\s]+")


def tokenize_on_words(texts: Iterable[str]) -> list[set[bytes]]:
    """Word tokens per text: runs of letters/digits and runs of punctuation (close to
    nltk's `word_tokenize`, without needing nltk; contractions split differently)."""
    return [{w.encode("utf-8") for w in _WORD.findall(text)} for text in texts]


def tokenize_on_ngrams(texts: Iterable[str], n: int = 1) -> list[set[bytes]]:
    """Character n-grams per text (the whole text when it is shorter than `n`)."""
    return [
        {text[i : i + n].encode("utf-8") for i in range(max(len(text) - n + 1, 1))}
        for text in texts
    ]


class _Buckets:
    """LSH band buckets: which band values were seen, in a dict or a SQLite file."""

    def __init__(self, storage: str, bands: int) -> None:
        self._seen: list[set[bytes]] | None = None
        self._db: sqlite3.Connection | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        if storage == "disk":
            self._folder = tempfile.TemporaryDirectory(prefix="stillhouse-minhash-")
            self._db = sqlite3.connect(Path(self._folder.name) / "lsh.sqlite")
            self._db.execute("CREATE TABLE band (b INTEGER, key BLOB, PRIMARY KEY (b, key))")
        else:
            self._seen = [set() for _ in range(bands)]

    def any_seen(self, keys: list[bytes]) -> bool:
        if self._seen is not None:
            return any(key in seen for key, seen in zip(keys, self._seen, strict=True))
        assert self._db is not None
        return any(
            self._db.execute("SELECT 1 FROM band WHERE b = ? AND key = ?", (band, key)).fetchone()
            for band, key in enumerate(keys)
        )

    def add(self, keys: list[bytes]) -> None:
        if self._seen is not None:
            for key, seen in zip(keys, self._seen, strict=True):
                seen.add(key)
            return
        assert self._db is not None
        self._db.executemany("INSERT OR IGNORE INTO band VALUES (?, ?)", list(enumerate(keys)))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        if self._folder is not None:
            self._folder.cleanup()


class MinHashDedup(GlobalStep):
    """Marks near-duplicate `text`s: `keep_row_after_minhash_filtering` is True for the
    first row of each group of near-duplicates (in input order) and False for the rest.

    Attributes:
        num_perm: Permutations (hash functions) per MinHash. Defaults to 128.
        seed: Seed of the MinHash permutations. Defaults to 1.
        tokenizer: "words" (word tokens) or "ngrams" (character n-grams of size `n`).
            Defaults to "words".
        n: The n-gram size for `tokenizer="ngrams"`. Defaults to 5.
        threshold: The Jaccard similarity above which two texts count as duplicates;
            lower values flag more rows. Defaults to 0.9.
        storage: "dict" keeps the LSH index in memory; "disk" in a temporary SQLite
            file. Defaults to "dict".

    Input columns: `text` (str).
    Output columns: `keep_row_after_minhash_filtering` (bool).
    """

    num_perm: int = Field(default=128, ge=2)
    seed: int = 1
    tokenizer: Literal["words", "ngrams"] = "words"
    n: int | None = 5
    threshold: float = Field(default=0.9, gt=0.0, lt=1.0)
    storage: Literal["dict", "disk"] = "dict"

    _ranges: list[tuple[int, int]] = PrivateAttr(default_factory=list)

    @property
    def inputs(self) -> list[str]:
        return ["text"]

    @property
    def outputs(self) -> list[str]:
        return [OUTPUT]

    def load(self) -> None:
        super().load()
        from datasketch import MinHashLSH

        # datasketch picks the bands (b) x rows (r) that best separate `threshold`.
        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        self._ranges = list(lsh.hashranges)

    def _tokens(self, texts: list[str]) -> list[set[bytes]]:
        if self.tokenizer == "words":
            return tokenize_on_words(texts)
        return tokenize_on_ngrams(texts, n=self.n or 1)

    def process(self, inputs: StepInput) -> StepOutput:
        from datasketch import MinHash

        if not self._ranges:
            self.load()
        texts = [str(row.get("text") or "") for row in inputs]
        hashes: list[Any] = MinHash.bulk(self._tokens(texts), num_perm=self.num_perm, seed=self.seed)
        buckets = _Buckets(self.storage, len(self._ranges))
        try:
            for row, minhash in zip(inputs, hashes, strict=True):
                values = minhash.hashvalues
                keys = [values[start:end].tobytes() for start, end in self._ranges]
                duplicate = buckets.any_seen(keys)
                if not duplicate:
                    buckets.add(keys)
                row[OUTPUT] = not duplicate
        finally:
            buckets.close()
        yield inputs
