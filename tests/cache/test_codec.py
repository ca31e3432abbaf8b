"""The data-only batch encoding (SPEC.md §3): exact round trips, nothing executable on disk."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from stillhouse.cache.codec import decode_json, decode_rows, encode_json, encode_rows
from stillhouse.core.errors import CacheError, CorruptCacheError

ROOT = Path(__file__).resolve().parents[2]

BATCHES = {
    "empty": [],
    "rows without keys": [{}, {}],
    "scalars and None": [{"x": 1, "t": "a", "f": 0.5, "b": True}, {"x": None, "t": "b", "f": None, "b": False}],
    "missing keys": [{"x": 1}, {"y": 2}, {"x": 3, "y": None}],
    "other keys, same number": [{"x": 1, "y": 2}, {"x": 3, "z": 4}],
    "nested dicts": [{"a": {"k": 1, "l": {"m": [1, None]}}}, {"a": {"j": [1, 2.0, None]}}],
    "mixed-type column": [{"m": 1}, {"m": "s"}, {"m": 1.5}, {"m": None}, {"m": True}, {"m": [1]}],
    "bytes": [{"b": b"\x00\xff"}, {"b": None}, {"b": b""}],
    "naive datetimes": [{"d": dt.datetime(2020, 1, 2, 3, 4, 5, 6)}, {"d": None}],
    "aware datetimes": [{"d": dt.datetime(2020, 1, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=2)))}],
    "dates and times": [{"d": dt.date(2020, 1, 2), "t": dt.time(1, 2, 3), "td": dt.timedelta(1, 2, 3)}],
    "tuples stay tuples": [{"t": (1, 2)}, {"t": [1, (2, 3)]}],
    "lists of floats": [{"e": [0.1, 0.2]}, {"e": [1.0]}, {"e": []}, {"e": None}],
    "ints and floats in one list": [{"e": [1, 2.0]}],
    "nan and infinities": [{"f": float("nan"), "g": float("inf"), "h": -0.0}],
    "big ints": [{"big": 2**80, "neg": -(2**70)}],
    "lone surrogate": [{"s": "\ud800x"}],
    "non-string dict keys": [{"k": {1: "a", (1, 2): "b", None: 3}}],
    "a dict that looks like a tag": [{"k": {"\u0000sh": "tricky", "v": 1}}],
    "numpy": [{"n": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.int64(3)}],
    "other types": [{"y": decimal.Decimal("1.10"), "z": uuid.UUID(int=5), "w": {1, 2}, "v": frozenset({3})}],
    "bytearray": [{"b": bytearray(b"ab")}],
}


def same(a, b) -> bool:
    """Equal, of the same types all the way down (and NaN equals NaN)."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float):
        return math.copysign(1, a) == math.copysign(1, b) and a == b
    return a == b


@pytest.mark.parametrize("name", list(BATCHES))
def test_rows_round_trip_exactly(name):
    rows = BATCHES[name]
    decoded, error = decode_rows(encode_rows(rows, error="boom: \ud800"))
    assert error == "boom: \ud800"
    assert same(rows, decoded), decoded


def test_a_value_that_is_not_data_is_refused_by_name():
    class Thing:
        pass

    with pytest.raises(CacheError, match=r"Column 'c' of step 's'.*Thing"):
        encode_rows([{"c": Thing()}], where="step 's'")


def test_damaged_bytes_are_a_corrupt_cache_error_naming_the_place():
    # (Flipped bytes are caught by the CRC of the record around the payload: records.py.)
    for size in (10, 20_000):
        data = encode_rows([{"x": i, "t": "text " * 10} for i in range(size)])
        with pytest.raises(CorruptCacheError, match="the file f"):
            decode_rows(data[: len(data) // 2], "the file f")


def test_routes_round_trip_as_json():
    assert decode_json(encode_json(["a", "b"])) == ["a", "b"]


def test_no_source_file_loads_pickled_data():
    found = subprocess.run(
        ["grep", "-rn", "-E", r"pickle\.(load|loads|Unpickler)|cloudpickle|marshal\.load|eval\(",
         "packages/cache/src", "packages/distiset/src"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert found.stdout == ""


def test_plain_columns_built_from_buffers_round_trip_exactly():
    from stillhouse.cache.codec import buffered_array

    rows = [
        {"i": value, "f": number, "s": text}
        for value, number, text in zip(
            [0, -1, 2**63 - 1, -(2**63)],
            [0.0, -0.0, math.inf, 1e-308],
            ["", "é", "日本語", "a\x00b"],
            strict=True,
        )
    ]
    decoded, _ = decode_rows(encode_rows(rows))
    assert decoded == rows
    assert math.copysign(1.0, decoded[1]["f"]) == -1.0
    nan = decode_rows(encode_rows([{"f": math.nan}]))[0][0]["f"]
    assert math.isnan(nan)
    # What buffers cannot hold goes through Arrow's own conversion (or JSON), unchanged.
    assert buffered_array([2**64], int) is None
    assert buffered_array(["\ud800"], str) is None
    odd = [{"i": 2**64, "s": "\ud800x"}]
    assert decode_rows(encode_rows(odd))[0] == odd
