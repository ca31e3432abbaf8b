"""One shared limit for three steps with two replicas each, across worker processes.

A small HTTP server started by the test counts the holders of a slot: each holder
calls `/enter` when its slot is granted (with the time it asked for the slot) and
`/exit` before giving it back. Until the limit's size has been reached once, `/enter`
waits for the others (a barrier), so "the limit lets N in at once" does not depend on
timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import forkserver

import pytest
from pydantic import PrivateAttr

from stillhouse.core import Pipeline, SharedLimit, Step, StepInput, StepOutput, shared_limit
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.results import rows_of

pytestmark = pytest.mark.integration

BARRIER_SECONDS = 60.0


class Counter:
    """The holders' log: how many at once at most, when each one entered, and when
    each one had asked for its slot (`time.monotonic()`: one clock for every process)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.inside = self.peak = 0
        self.entered: list[float] = []
        self.asked: list[float] = []
        self.reached = False
        self.cond = threading.Condition()

    def enter(self, asked: float) -> None:
        with self.cond:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            self.entered.append(time.monotonic())
            self.asked.append(asked)
            if self.inside >= self.size:
                self.reached = True
                self.cond.notify_all()
            deadline = time.monotonic() + BARRIER_SECONDS
            while not self.reached and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())

    def exit(self) -> None:
        with self.cond:
            self.inside -= 1


@pytest.fixture
def counter_server() -> Iterator[tuple[Counter, str]]:
    holder: dict[str, Counter] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            counter = holder["counter"]
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            counter.enter(float(body)) if self.path == "/enter" else counter.exit()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def make(size: int) -> tuple[Counter, str]:
        holder["counter"] = Counter(size)
        return holder["counter"], f"http://127.0.0.1:{server.server_address[1]}"

    try:
        yield make
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def post(url: str, data: bytes = b"") -> None:
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=120):
        pass


class CallEndpoint(Step):
    """Holds one slot of the shared limit per row while it "calls" the counter."""

    url: str
    limit_name: str = "endpoint"
    max_concurrency: int | None = None
    per_minute: dict[str, float] | None = None
    hold: float = 0.0
    use_async: bool = False

    @property
    def inputs(self) -> list[str]:
        return ["x"]

    @property
    def outputs(self) -> list[str]:
        return [f"done_{self.name}"]

    _limit: SharedLimit | None = PrivateAttr(default=None)

    def load(self) -> None:
        self._limit = shared_limit(self.limit_name, self.max_concurrency, self.per_minute)

    def _call(self, asked: float) -> None:
        post(f"{self.url}/enter", repr(asked).encode())
        time.sleep(self.hold)
        post(f"{self.url}/exit")

    def process(self, inputs: StepInput) -> StepOutput:
        if self.use_async:  # slots held by coroutines: several rows of one batch at once
            async def one() -> None:
                asked = time.monotonic()  # before asking: never after the grant
                async with self._limit.slot():
                    await asyncio.to_thread(self._call, asked)

            async def batch() -> None:
                await asyncio.gather(*(one() for _ in inputs))

            asyncio.run(batch())
        else:
            for _ in inputs:
                asked = time.monotonic()  # before asking: never after the grant
                with self._limit.slot_sync(costs={"requests": 1}):
                    self._call(asked)
        for row in inputs:
            row[f"done_{self.name}"] = True
        yield inputs



def build(tmp_path, executor: str, url: str, rows: int, **limit) -> Pipeline:
    options = {"start_method": limit.pop("start_method")} if limit.get("start_method") else {}
    limit.pop("start_method", None)
    with Pipeline(name="limits", cache_dir=str(tmp_path), executor=executor, **options) as pipeline:
        data = LoadDataFromDicts(data=[{"x": i} for i in range(rows)], batch_size=4)
        for index in range(3):
            data >> CallEndpoint(
                name=f"call_{index}", url=url, input_batch_size=4, resources={"replicas": 2},
                use_async=index == 2, **limit,
            )
    return pipeline


@pytest.mark.parametrize(
    ("executor", "start_method"),
    [
        ("mp", "fork"),
        ("mp", "forkserver"),
        ("threaded", None),
        # Ray starts its own runtime here: slow on a loaded 2-core machine.
        pytest.param("ray", None, marks=[pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(400)]),
    ],
)
def test_three_steps_with_two_replicas_share_one_concurrency_limit(tmp_path, counter_server, executor, start_method):
    size = 3
    counter, url = counter_server(size)
    if start_method == "forkserver":  # started before the run: workers miss its environment
        forkserver.ensure_running()
    pipeline = build(tmp_path, executor, url, rows=12, max_concurrency=size, hold=0.02, start_method=start_method)
    result = pipeline.run(use_cache=False, progress=False)
    for index in range(3):
        assert len(rows_of(result, f"call_{index}")) == 12
    assert len(counter.entered) == 36
    assert counter.peak == size, f"at most {size} holders at once, and {size} were reached"


def test_per_minute_bounds_the_throughput_of_every_replica_together(tmp_path, counter_server):
    counter, url = counter_server(1)  # no barrier beyond the first holder
    per_second = 20  # a bucket holds one second: at most 20 at once, then 20 a second
    rows = 27
    pipeline = build(tmp_path, "mp", url, rows=rows, per_minute={"requests": per_second * 60})
    pipeline.run(use_cache=False, progress=False)
    times = sorted(counter.entered)
    total = 3 * rows
    assert len(times) == total
    # The server grants at most `burst + rate * t` in the t seconds after its first grant,
    # which comes after the first holder asked for a slot. A holder reaches the counter
    # after its grant, late on a loaded machine but never early, so counted from that
    # first asking no more arrive within t seconds than were granted. (Counted from
    # arrivals, a stall could bunch late ones into one second, or a late first one
    # shorten the span.)
    first = min(counter.asked)
    for seconds in (1, 2, 3):
        assert sum(1 for t in times if t < first + seconds) <= per_second * (1 + seconds)
    least = (total - per_second) / per_second  # from the first grant to the last
    assert times[-1] - first >= least
