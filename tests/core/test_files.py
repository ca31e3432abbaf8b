"""`stillhouse.core.files.write_in_pieces`: large payloads in writes of at most
`WRITE_PIECE` bytes, small ones in one, the bytes unchanged."""

from __future__ import annotations

import os

import pytest

from stillhouse.core.files import WRITE_PIECE, write_in_pieces


class Recording:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.data = bytearray()

    def write(self, data) -> int:
        view = memoryview(data)
        self.sizes.append(view.nbytes)
        self.data += view
        return view.nbytes


def test_large_payloads_are_written_in_pieces_small_writes_whole():
    payload = os.urandom(WRITE_PIECE * 3 + 1234)
    handle = Recording()
    assert write_in_pieces(handle, payload) == len(payload)
    assert handle.sizes == [WRITE_PIECE] * 3 + [1234]
    assert bytes(handle.data) == payload
    small = Recording()
    assert write_in_pieces(small, b"abc") == 3
    assert small.sizes == [3]


def test_a_payload_of_exactly_one_piece_is_one_write():
    handle = Recording()
    write_in_pieces(handle, bytes(WRITE_PIECE))
    assert handle.sizes == [WRITE_PIECE]


class Short(Recording):
    """A raw handle that takes at most `limit` bytes a write, as an unbuffered one may."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data) -> int:
        return super().write(memoryview(data)[: self.limit])


def test_a_short_write_is_followed_by_one_for_the_rest():
    payload = os.urandom(WRITE_PIECE + 1000)
    handle = Short(limit=100_000)
    assert write_in_pieces(handle, payload) == len(payload)
    assert bytes(handle.data) == payload
    assert handle.sizes == [100_000, 100_000, 63_144]  # each write starts where the last one stopped


def test_a_handle_that_takes_nothing_is_an_error_not_a_loop():
    with pytest.raises(OSError, match="took none of 3 bytes"):
        write_in_pieces(Short(limit=0), b"abc")
