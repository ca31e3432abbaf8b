"""`stillhouse.core.lookups`: one answer per key inside a run's preparation, a fresh
look outside it, and a failed look never remembered."""

from __future__ import annotations

import threading

import pytest

from stillhouse.core.lookups import lookup_once, one_lookup_each


def counter():
    asked = []

    def look():
        asked.append(None)
        return len(asked)

    return asked, look


def test_outside_a_scope_every_ask_looks():
    _, look = counter()
    assert [lookup_once("k", look) for _ in range(3)] == [1, 2, 3]


def test_inside_a_scope_a_key_is_looked_up_once_and_each_scope_looks_again():
    _, look = counter()
    with one_lookup_each():
        assert [lookup_once("k", look) for _ in range(3)] == [1, 1, 1]
        assert lookup_once("other", look) == 2
    with one_lookup_each():
        assert lookup_once("k", look) == 3


def test_a_nested_scope_shares_the_outer_answers():
    asked, look = counter()
    with one_lookup_each():
        assert lookup_once("k", look) == 1
        with one_lookup_each():
            assert lookup_once("k", look) == 1
        assert lookup_once("k", look) == 1
    assert len(asked) == 1


def test_a_look_that_raises_is_not_remembered():
    calls = []

    def flaky():
        calls.append(None)
        if len(calls) == 1:
            raise ConnectionError("hub unreachable")
        return "sha"

    with one_lookup_each():
        with pytest.raises(ConnectionError):
            lookup_once("k", flaky)
        assert lookup_once("k", flaky) == "sha"


def test_another_thread_is_outside_the_scope():
    _, look = counter()
    seen = []
    with one_lookup_each():
        lookup_once("k", look)
        thread = threading.Thread(target=lambda: seen.append(lookup_once("k", look)))
        thread.start()
        thread.join(timeout=10)
    assert seen == [2]
