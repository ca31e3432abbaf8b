"""Opening an LLM call record of many calls, and answering every call from it.

    uv run --no-sync python -m benchmarks.llm_record --compare 7c5b12a
    uv run --no-sync python -m benchmarks.llm_record --calls 1000000

Writes a record of N calls (default 100,000) of a 1 KB chat completion each, then, in
a fresh process each, opens it with `CallRecord` and asks it for every key: the
seconds to open, the peak RSS it added, the seconds to answer all. `--compare REV`
does the same with `stillhouse/llms/record.py` as it is at git revision REV,
alternating with the workspace's, twice each.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = "packages/llms/src/stillhouse/llms/record.py"


def _key(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def make(folder: Path, calls: int) -> None:
    from stillhouse.llms.record import CallRecord

    response = {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 150},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 150, "total_tokens": 170},
    }
    record = CallRecord(folder)  # the workspace's line format: older revisions read it too
    for i in range(calls):
        record.put(_key(i), response)
    record.close()


def child(module_path: str, folder: str, calls: int) -> dict[str, float]:
    spec = importlib.util.spec_from_file_location("record_under_test", module_path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    record = module.CallRecord(Path(folder))
    opened = time.perf_counter() - started
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    keys = [_key(i) for i in range(calls)]
    started = time.perf_counter()
    answered = sum(record.get(key) is not None for key in keys)
    return {"open_s": opened, "rss_mb": added, "answer_all_s": time.perf_counter() - started, "answered": answered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--compare", metavar="REV")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return
    work = Path(tempfile.mkdtemp(prefix="stillhouse-record-"))
    try:
        folder = work / "record"
        folder.mkdir()
        make(folder, args.calls)
        modules = {"workspace": str(ROOT / MODULE)}
        if args.compare:
            old = work / "old_record.py"
            old.write_text(subprocess.run(["git", "show", f"{args.compare}:{MODULE}"], cwd=ROOT, check=True,
                                          capture_output=True, text=True).stdout)
            modules[args.compare] = str(old)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        print(f"{args.calls} calls, {size:.0f} MB on disk")
        print("| code | open (s) | peak RSS added (MB) | answer every call (s) |")
        print("|---|---:|---:|---:|")
        for _ in range(2):
            for name, path in modules.items():
                out = subprocess.run([sys.executable, "-m", "benchmarks.llm_record", "--child", path, str(folder),
                                      str(args.calls)], cwd=ROOT, check=True, capture_output=True, text=True,
                                     timeout=600)
                r = json.loads(out.stdout.splitlines()[-1])
                assert r["answered"] == args.calls, r
                print(f"| {name} | {r['open_s']:.2f} | {r['rss_mb']:.0f} | {r['answer_all_s']:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
