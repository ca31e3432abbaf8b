"""Distiset.push_to_hub against a fake Hub served over local HTTP."""

from __future__ import annotations

import logging

import pytest

from stillhouse.distiset import ParquetOutputWriter

# The fake Hub takes plain LFS uploads (Xet is off), and huggingface_hub's LFS path still
# posts raw bytes with `data=`, which httpx deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"
)

TOKEN = "hf_FAKE_token_never_logged_0123456789"


def _distiset(tmp_path, leaves=("text", "scores")):
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / "pipeline.yaml").write_text(
        "stillhouse: {format_version: 1}\npipeline:\n  name: demo\n  steps:\n"
        "  - {name: load, step: {type_info: {module: m, name: LoadDataFromDicts}}}\n"
        + "".join(f"  - {{name: {leaf}, step: {{type_info: {{module: m, name: Gen}}}}}}\n" for leaf in leaves)
        + "  connections:\n  - {from: load, to: [" + ", ".join(leaves) + "]}\n"
    )
    (run_dir / "pipeline.log").write_text("log line\n")
    writer = ParquetOutputWriter(run_dir / "data", list(leaves), rows_per_file=2)
    for leaf in leaves:
        writer.begin(leaf)
        writer.write(leaf, [{"i": i, leaf: f"{leaf}-{i}"} for i in range(5)])
        writer.finish(leaf)
    return writer.result()


@pytest.mark.timeout(60)
def test_push(fake_hub, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    distiset = _distiset(tmp_path)
    distiset.push_to_hub("tester/demo", token=TOKEN)
    print(fake_hub.unhandled)
    repo = fake_hub.repos["tester/demo"]
    print(sorted(repo.files))
    print(repo.files["README.md"].decode())
    print([ (m, p) for m, p, _ in fake_hub.requests])
