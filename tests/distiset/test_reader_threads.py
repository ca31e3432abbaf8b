"""Reading results hands pyarrow no Python object to use on its own threads.

pyarrow reads a Python file on its IO threads and may drop the last reference to it
there after `read_table` returned. If that thread waits for the GIL while the
interpreter finalizes, Python ends it inside a C++ destructor and the process aborts
at exit ("terminate called without an active exception", SIGABRT) after a run that
succeeded. So every call into a result file must come from the reading thread.
"""

from __future__ import annotations

import gc
import io
import threading
import uuid

import pyarrow as pa
from fsspec.implementations.memory import MemoryFileSystem

from stillhouse.distiset import ParquetOutputWriter
from stillhouse.distiset.reader import unified_file


class _WatchedFile(io.RawIOBase):
    """A read-only file that records which thread calls it (and frees it)."""

    def __init__(self, inner: io.IOBase, calls: list[tuple[str, int]]) -> None:
        super().__init__()
        self._inner, self._calls = inner, calls

    def _note(self, op: str) -> None:
        self._calls.append((op, threading.get_ident()))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self._note("read")
        return self._inner.read(size)

    def readinto(self, buffer) -> int:
        self._note("readinto")
        return self._inner.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        self._note("seek")
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        self._note("tell")
        return self._inner.tell()

    def close(self) -> None:
        self._note("close")
        self._inner.close()
        super().close()

    def __del__(self) -> None:
        self._note("del")


class _WatchedMemoryFileSystem(MemoryFileSystem):
    """The in-memory filesystem, its files opened for reading watched."""

    protocol = "watchedmemory"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, int]] = []

    def _open(self, path, mode="rb", **kwargs):
        handle = super()._open(path, mode, **kwargs)
        return _WatchedFile(handle, self.calls) if "r" in mode else handle


def test_result_files_are_only_touched_by_the_reading_thread():
    root = f"/reader-threads-{uuid.uuid4().hex}/data"
    writer = ParquetOutputWriter(f"memory://{root}", ["leaf"], rows_per_file=2)
    writer.begin("leaf")
    for batch in ([{"x": 1, "s": "a"}], [{"x": 2, "s": None}], [{"x": 3, "s": "c"}]):
        writer.write("leaf", batch)
    writer.finish("leaf")
    fs = _WatchedMemoryFileSystem(skip_instance_cache=True)
    try:
        path = unified_file(fs, f"{root}/leaf", leaf="leaf")
        gc.collect()
        assert path is not None
        with pa.memory_map(path) as source:
            assert pa.ipc.open_stream(source).read_all().column("x").to_pylist() == [1, 2, 3]
        me = threading.get_ident()
        assert fs.calls, "the result files were not read through the filesystem"
        elsewhere = sorted({op for op, thread in fs.calls if thread != me})
        assert not elsewhere, f"pyarrow called {elsewhere} on a result file from its own threads"
    finally:
        fs.rm(root.rsplit("/", 1)[0], recursive=True)


def test_reading_parquet_never_loads_pyarrow_dataset(tmp_path):
    """Inline rows and result files are read without `pyarrow.dataset` (`read_table` goes
    through it): with it, 6 of 300 `stillhouse pipeline info` processes aborted at exit under load
    ("terminate called without an active exception", apache/arrow#34314)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        import pyarrow as pa, pyarrow.parquet as pq
        from stillhouse.core import Pipeline
        from stillhouse.core.steps import LoadDataFromDicts
        from stillhouse.distiset.reader import _decode_table

        with Pipeline(name="inline") as pipeline:
            LoadDataFromDicts(name="load", data=[{{"x": i}} for i in range(5)])
        pipeline.save({str(tmp_path / "pipeline.yaml")!r})
        loaded = Pipeline.from_yaml({str(tmp_path / "pipeline.yaml")!r})
        assert loaded.dag.get_step("load").data == [{{"x": i}} for i in range(5)]
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({{"x": [1, 2]}}), sink, write_page_checksum=True)
        assert _decode_table(None, "f", sink.getvalue(), None).to_pylist() == [{{"x": 1}}, {{"x": 2}}]
        assert "pyarrow.dataset" not in sys.modules, "pyarrow.dataset was imported"
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
