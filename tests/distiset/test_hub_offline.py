"""push_to_hub with the Hub unreachable: one error naming the endpoint and what to check,
not the HTTP client's traceback (issue 19 item 14)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
PUSH = textwrap.dedent('''
    import sys
    from stillhouse.distiset import ParquetOutputWriter

    writer = ParquetOutputWriter(sys.argv[1], ["a"], rows_per_file=2)
    writer.begin("a"); writer.write("a", [{"i": 1}]); writer.finish("a")
    writer.result().push_to_hub("me/offline", token="hf_FAKE_never_logged")
''')


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed on exit: connections are refused


def test_unreachable_hub_is_one_error_naming_the_endpoint(tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PUSH, str(tmp_path / "data")], env=env,
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"stillhouse.core.errors.HubConnectionError: Could not reach the Hugging Face Hub at "
        f"{endpoint} to push 'me/offline' ("
    )
    assert "Check the network connection" in last
    assert "httpx" not in done.stderr and "httpcore" not in done.stderr
    assert done.stderr.count('  File "') <= 4  # the caller's frames and ours, no client frames
    assert "hf_FAKE_never_logged" not in done.stderr
