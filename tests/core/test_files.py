"""`stillhouse.core.files.write_in_pieces`: large payloads in writes of at most
`WRITE_PIECE` bytes, small ones in one, the bytes unchanged."""

from __future__ import annotations

import os

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
