"""Helpers for packages that write large files (the cache's record logs, the result
writer's Parquet and Arrow files). Standard library only: where and in what format
files are written belongs to the package that writes them."""

from __future__ import annotations

from typing import Any

WRITE_PIECE = 256 * 1024
"""Larger payloads are written in pieces of this size. One `write` of 1-2 MB makes the
kernel take large page-cache folios, which cost our benchmark machine (Linux 6.18 in a
VM) 0.9-2.6 s per GB written against 0.17-0.26 s in 256 KB writes (docs/benchmarks.md,
"Issue 20, fifth pass"); elsewhere the pieces cost a few system calls per MB."""


def write_in_pieces(handle: Any, data: Any) -> int:
    """`handle.write(data)` in writes of at most `WRITE_PIECE` bytes; the bytes written.

    A write that takes fewer bytes than it was given (a raw, unbuffered handle may) is
    followed by one for the rest; a handle whose `write` returns None (some file-likes
    do) is taken to have written all it was given."""
    view = memoryview(data).cast("B")
    start = 0
    while start < view.nbytes:
        piece = view[start : start + WRITE_PIECE]
        written = handle.write(piece)
        if written == 0:
            raise OSError(f"{handle!r} took none of {piece.nbytes} bytes")
        start += piece.nbytes if written is None else written
    return view.nbytes
