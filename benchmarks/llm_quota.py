"""A provider's quota, read from its `x-ratelimit-*` headers or not (issue 16's leftover).

    uv run --no-sync python -m benchmarks.llm_quota
    uv run --no-sync python -m benchmarks.llm_quota --rows 400 --concurrency 8,64 --repeat 3

`OpenAILLM.agenerate` for N rows at once against FakeOpenAIServer with a quota of
20 requests per 0.25 s window (answers carry OpenAI's `x-ratelimit-*` headers; a
request over the quota gets 429 with `Retry-After` until the window resets), with
`max_retries=6`. Each case runs in a fresh process, twice: as shipped (`paced`: an
answer saying the quota is spent pauses the endpoint's shared limit until the reset)
and with that reading switched off in the child (`unpaced`: only `Retry-After` and
AIMD). Reported: rows answered and failed, 429s, requests sent, seconds, and the
ideal (N / 20 x 0.25 s). The cases alternate, so both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

QUOTA = (20, 0.25)


def child(paced: bool, rows: int, concurrency: int) -> dict[str, float]:
    from stillhouse.llms import OpenAILLM
    from stillhouse.llms.testing import FakeOpenAIServer

    if not paced:
        OpenAILLM._honour_quota = lambda self, headers: None  # type: ignore[method-assign]

    async def ask(llm: OpenAILLM, i: int) -> bool:
        try:
            await llm.agenerate([{"role": "user", "content": f"question {i}"}])
        except Exception:  # a row that failed for good
            return False
        return True

    async def ask_all(llm: OpenAILLM) -> list[bool]:
        return await asyncio.gather(*(ask(llm, i) for i in range(rows)))

    with FakeOpenAIServer(latency=0.02, quota=QUOTA) as server:
        llm = OpenAILLM(model="fake-model", base_url=server.base_url, api_key="sk-bench",
                        max_concurrency=concurrency, max_retries=6)
        llm.load()
        started = time.monotonic()
        answered = asyncio.run(ask_all(llm))
        seconds = time.monotonic() - started
        quota_429s = sum(1 for r in server.requests if r.get("reason") == "quota")
        return {"answered": sum(answered), "failed": rows - sum(answered), "429s": quota_429s,
                "sent": len(server.chat_requests()), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--concurrency", default="8,64")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, rows, concurrency = args.child
        print(json.dumps(child(mode == "paced", int(rows), int(concurrency))))
        return
    ideal = args.rows / QUOTA[0] * QUOTA[1]
    print(f"{args.rows} rows, quota {QUOTA[0]} requests per {QUOTA[1]} s, max_retries 6; ideal {ideal:.2f} s")
    print("| max_concurrency | reading | answered | failed | 429s | sent | seconds |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        runs: dict[str, list[dict[str, float]]] = {"paced": [], "unpaced": []}
        for _ in range(args.repeat):
            for mode in runs:
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.llm_quota", "--child", mode, str(args.rows), str(concurrency)],
                    capture_output=True, text=True, check=True, timeout=600,
                )
                runs[mode].append(json.loads(out.stdout.splitlines()[-1]))
        for mode, results in runs.items():
            cells = [f"{statistics.median(r[k] for r in results):.0f} ({min(r[k] for r in results):.0f}-"
                     f"{max(r[k] for r in results):.0f})" for k in ("answered", "failed", "429s", "sent")]
            secs = statistics.median(r["seconds"] for r in results)
            print(f"| {concurrency} | {mode} | {' | '.join(cells)} | {secs:.2f} |")


if __name__ == "__main__":
    main()
