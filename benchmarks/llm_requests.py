"""LLM requests benchmark (issue 16): stillhouse-llms against FakeOpenAIServer.

    uv run --no-sync python -m benchmarks.llm_requests                     # 10,000 requests
    uv run --no-sync python -m benchmarks.llm_requests --rows 2000 --only clean,errors

N chat requests (default 10,000), the server's latency lognormal (median 200 ms,
sigma 1.0, seeded) and capped at 64 concurrent requests (more get 429). The server
runs in a process of its own, so its threads do not share the client's GIL. Cases:

- `clean`: stillhouse threaded and mp; ideal = sum of the answered requests'
  latencies / 64; goal within 1.2x of it.
- `distilabel`: distilabel 1.5.3 `TextGeneration(llm=OpenAILLM(base_url=fake))`
  from `benchmarks/.venvs/distilabel-llms` (made once: distilabel, openai<2);
  goal stillhouse >= 3x faster.
- `errors`: 5% 429 and 2% 500 injected: zero rows lost (answered or failed with
  their error in metadata); the retries, counted at the server.
- `kill`: SIGKILL at 50% of the answers, rerun: requests sent in total <= N + 64.

Results go to `benchmarks/results/llm-<time>.json` and are printed as a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import venv

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DISTILABEL_VENV = venv.VENV.parent / "distilabel-llms"
CAP = 64


# -- the server, in a process of its own ------------------------------------------------


def _serve(conn: Any, options: dict[str, Any]) -> None:
    from stillhouse.llms.testing import FakeOpenAIServer, Latency

    latency = Latency.lognormal(options.pop("median"), options.pop("sigma"))
    with FakeOpenAIServer(latency=latency, **options) as server:
        conn.send(server.base_url)
        while True:
            command = conn.recv()
            if command == "stop":
                return
            if command == "reset":
                server.reset_log()
                conn.send(None)
            elif command == "stats":
                chat = server.chat_requests()
                statuses: dict[str, int] = {}
                for request in chat:
                    statuses[str(request["status"])] = statuses.get(str(request["status"]), 0) + 1
                answered = [r for r in chat if r["status"] == 200]
                conn.send({"statuses": statuses, "answered": len(answered),
                           "latency_sum": sum(r["latency"] for r in answered),
                           "max_in_flight": server.max_in_flight})


class Server:
    """A FakeOpenAIServer in a child process: `base_url`, `stats()`, `reset()`."""

    def __init__(self, **options: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, options), daemon=True)
        self._process.start()
        self.base_url: str = self._conn.recv()

    def stats(self) -> dict[str, Any]:
        self._conn.send("stats")
        return self._conn.recv()

    def reset(self) -> None:
        self._conn.send("reset")
        self._conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# -- one run of the pipeline, in a fresh process -------------------------------------------


def _start(python: str, engine: str, executor: str, base_url: str, rows: int, cache: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STILLHOUSE_PROGRESS": "0"}
    return subprocess.Popen(
        [python, "-m", "benchmarks.llm_pipeline", engine, executor, base_url, str(rows), str(cache), str(out)],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _finish(process: subprocess.Popen, out: Path, timeout: float) -> dict[str, Any]:
    try:
        _, err = process.communicate(timeout=timeout)
    finally:
        _kill(process)
    if process.returncode != 0:
        return {"error": err.strip()[-1500:]}
    return json.loads(out.read_text())


def run_once(python: str, engine: str, executor: str, server: Server, rows: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        server.reset()
        out = Path(tmp) / "out.json"
        result = _finish(_start(python, engine, executor, server.base_url, rows, Path(tmp) / "cache", out), out, timeout)
        return {**result, "server": server.stats()}


def run_killed(executor: str, server: Server, rows: int, timeout: float) -> dict[str, Any]:
    """SIGKILL the run when half the rows are answered, then rerun to the end."""
    with tempfile.TemporaryDirectory(prefix="llm-bench-kill-") as tmp:
        server.reset()
        cache, out = Path(tmp) / "cache", Path(tmp) / "out.json"
        process = _start(sys.executable, "stillhouse", executor, server.base_url, rows, cache, out)
        deadline = time.monotonic() + timeout
        while server.stats()["answered"] < rows // 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        _kill(process)
        process.communicate(timeout=30)
        at_kill = server.stats()["answered"]
        result = _finish(_start(sys.executable, "stillhouse", executor, server.base_url, rows, cache, out), out, timeout)
        stats = server.stats()
        return {**result, "answered_at_kill": at_kill, "answered_total": stats["answered"],
                "sent_total": sum(stats["statuses"].values()), "server": stats}


# -- the cases --------------------------------------------------------------------------------


def distilabel_python(log=print) -> str | None:
    python, note = venv.ensure(DISTILABEL_VENV, log=log)
    log(note)
    if python is None:
        return None
    check = subprocess.run([python, "-c", "import openai"], capture_output=True)
    if check.returncode != 0 and shutil.which("uv"):
        subprocess.run(["uv", "pip", "install", "--quiet", "--python", python, "openai<2"], check=False, timeout=900)
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--median", type=float, default=0.2)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="clean,distilabel,errors,kill")
    parser.add_argument("--executors", default="threaded,mp")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    cases = set(args.only.split(","))
    executors = args.executors.split(",")
    report: dict[str, Any] = {"rows": args.rows, "median": args.median, "sigma": args.sigma, "cap": CAP,
                              "seed": args.seed, "cpus": os.cpu_count(), "load": os.getloadavg(), "results": {}}
    results = report["results"]

    def show(name: str, result: dict[str, Any]) -> None:
        results[name] = result
        print(f"{name}: {json.dumps(result)}", flush=True)

    server = Server(median=args.median, sigma=args.sigma, seed=args.seed, max_concurrency=CAP, retry_after=0.5)
    try:
        if "clean" in cases:
            for executor in executors:
                result = run_once(sys.executable, "stillhouse", executor, server, args.rows, args.timeout)
                result["ideal"] = result["server"]["latency_sum"] / CAP
                show(f"stillhouse-{executor}", result)
        if "distilabel" in cases:
            python = distilabel_python()
            if python is not None:
                result = run_once(python, "distilabel", "mp", server, args.rows, args.timeout)
                result["ideal"] = result["server"]["latency_sum"] / CAP
                show("distilabel-1.5.3", result)
    finally:
        server.close()
    if "errors" in cases:
        faulty = Server(median=args.median, sigma=args.sigma, seed=args.seed, max_concurrency=CAP,
                        retry_after=0.5, rate_limit_rate=0.05, error_rate=0.02)
        try:
            for executor in executors:
                show(f"errors-{executor}", run_once(sys.executable, "stillhouse", executor, faulty, args.rows, args.timeout))
        finally:
            faulty.close()
    if "kill" in cases:
        server = Server(median=args.median, sigma=args.sigma, seed=args.seed, max_concurrency=CAP, retry_after=0.5)
        try:
            for executor in executors:
                show(f"kill-{executor}", run_killed(executor, server, args.rows, args.timeout))
        finally:
            server.close()

    print()
    print(table(report))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"llm-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {path}")
    return 0 if all("error" not in r for r in results.values()) else 1


def table(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [f"{rows} chat requests, lognormal latency median {report['median']} s sigma {report['sigma']}, "
             f"server cap {report['cap']}, {report['cpus']} CPUs, load {report['load'][0]:.1f}",
             "", "| case | wall s | ideal s | wall / ideal | rows | failed | 429s | 500s | max in flight |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][-200:]!r} |")
            continue
        statuses = r["server"]["statuses"]
        ideal = r.get("ideal")
        ideal_text = f"{ideal:.1f}" if ideal else ""
        ratio_text = f"{r['seconds'] / ideal:.2f}" if ideal else ""
        lines.append(
            f"| {name} | {r['seconds']:.1f} | {ideal_text} | {ratio_text} | {r['rows']} | {r['failed']} | "
            f"{statuses.get('429', 0)} | {statuses.get('500', 0)} | {r['server']['max_in_flight']} |")
    for name, r in report["results"].items():
        if name.startswith("kill-") and "error" not in r:
            lines.append(f"\n{name}: {r['answered_at_kill']} answered at the kill, "
                         f"{r['answered_total']} answered in total (bound {rows} + {CAP}), "
                         f"{r['sent_total']} sent in total")
    ours = report["results"].get("stillhouse-threaded") or report["results"].get("stillhouse-mp")
    theirs = report["results"].get("distilabel-1.5.3")
    if ours and theirs and "error" not in ours and "error" not in theirs:
        lines.append(f"\ndistilabel / stillhouse: {theirs['seconds'] / ours['seconds']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
