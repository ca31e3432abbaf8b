"""Shared limits: one concurrency and rate limit for every step, replica and process of a run.

```python
limit = shared_limit("api.example.com", max_concurrency=64, per_minute={"requests": 500})
async with limit.slot(costs={"requests": 1}):
    ...  # at most 64 of these at once in the whole run, at most 500 a minute
```

Every `shared_limit()` with the same name in one run is the same limit. The run's
driver serves the limits (`serve_limits()`, entered by `engine/run.py`): a thread
(`LimitServer`) answering on a Unix socket whose address is in `$STILLHOUSE_LIMITS`
for the length of the run, so workers started by fork or spawn inherit it and
executors that start processes some other way pass `worker_environment()` to them.
A request for a slot is queued in the server and answered when the slot is free
(first come, first served; nobody sleeps and polls); a connection that closes, as
when its process dies, gives back every slot it held. Outside a run the same server
runs inside this process, for this process only; there, with no run to scope a
definition, a name takes the settings of the handle that used it last.

Rates are token buckets per unit, refilled continuously at `amount / 60` a second
and holding at most `BURST_SECONDS` of refill, so a limit of 600 a minute starts at
most 10 at once and then 10 a second. A slot takes `costs[unit]` from each bucket
(1 of every unit when `costs` is None; units the limit does not meter are free);
a cost larger than a bucket holds waits for a full bucket and leaves it in debt.

Not here: anything about a particular service (status codes, retries, LLM
tokens): callers name their own units.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import logging
import math
import os
import selectors
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from stillhouse.core.errors import InvalidLimitError, LimitError

logger = logging.getLogger("stillhouse.limits")

ADDRESS_ENV = "STILLHOUSE_LIMITS"
"""Where the running pipeline's limit server listens (`unix:<path>` or `tcp:<host>:<port>`)."""

BURST_SECONDS = 1.0
"""How much refill a rate bucket holds: a second's worth, so a fresh limit does not
fire a whole minute's budget at once (services often enforce per-minute limits per
second)."""

Costs = Mapping[str, float]
_Key = tuple[int, int]  # (connection, request id)


# -- the limit itself (no I/O) -------------------------------------------------------


class _Bucket:
    """A token bucket for one unit."""

    def __init__(self, per_minute: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = self.rate * BURST_SECONDS
        self.level = self.capacity
        self.at = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` can be taken (0: now)."""
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        need = min(cost, self.capacity)
        short = need - self.level
        return 0.0 if short <= 1e-9 * max(1.0, need) else short / self.rate

    def take(self, cost: float) -> None:
        self.level -= cost


class _Limit:
    """One named limit: who holds a slot, who waits (in order), and the rate buckets."""

    def __init__(self, max_concurrency: int | None, per_minute: Costs | None, now: float) -> None:
        self.held: set[_Key] = set()
        self.waiting: dict[_Key, Costs | None] = {}  # insertion order is arrival order
        self.buckets: dict[str, _Bucket] = {}
        self.paused_until = 0.0  # no slot is granted before this (`pause`)
        self.define(max_concurrency, per_minute, now)

    def define(self, max_concurrency: int | None, per_minute: Costs | None, now: float) -> None:
        """Take these settings. Slots held and requests waiting stay; a rate that did not
        change keeps its bucket, a new or changed one starts full."""
        self.defined = self.settings(max_concurrency, per_minute)
        self.max_concurrency = max_concurrency
        old = self.buckets
        self.buckets = {
            unit: old[unit] if unit in old and old[unit].rate == amount / 60.0 else _Bucket(amount, now)
            for unit, amount in (per_minute or {}).items()
        }

    @staticmethod
    def settings(max_concurrency: int | None, per_minute: Costs | None) -> dict[str, Any]:
        return {"max_concurrency": max_concurrency, "per_minute": dict(per_minute or {}) or None}

    def grant(self, now: float) -> tuple[list[_Key], float | None]:
        """Grant waiting requests in order while slots and rates allow.

        Returns the granted keys and, when the first waiter is held back by a rate,
        the seconds until it can go."""
        granted: list[_Key] = []
        if self.waiting and now < self.paused_until:
            return granted, self.paused_until - now
        while self.waiting:
            if self.max_concurrency is not None and len(self.held) >= self.max_concurrency:
                return granted, None
            key, costs = next(iter(self.waiting.items()))
            charges = self._charges(costs)
            wait = max((self.buckets[unit].wait(c, now) for unit, c in charges.items()), default=0.0)
            if wait > 0:
                return granted, wait
            for unit, cost in charges.items():
                self.buckets[unit].take(cost)
            del self.waiting[key]
            self.held.add(key)
            granted.append(key)
        return granted, None

    def pause(self, seconds: float, now: float) -> None:
        """Grant nothing for `seconds` from `now` (a later end of an earlier pause stays)."""
        self.paused_until = max(self.paused_until, now + seconds)

    def _charges(self, costs: Costs | None) -> dict[str, float]:
        if costs is None:
            return dict.fromkeys(self.buckets, 1.0)
        return {unit: float(c) for unit, c in costs.items() if unit in self.buckets and c}

    def release(self, key: _Key) -> None:
        """Give back a held slot, or withdraw a request still waiting."""
        self.held.discard(key)
        self.waiting.pop(key, None)

    def drop(self, connection: int) -> bool:
        """Release everything a closed connection held or asked for."""
        gone = {k for k in self.held if k[0] == connection}
        gone |= {k for k in self.waiting if k[0] == connection}
        for key in gone:
            self.release(key)
        return bool(gone)


# -- the server ------------------------------------------------------------------------


class _Connection:
    __slots__ = ("id", "inbox", "outbox", "sock")

    def __init__(self, ident: int, sock: socket.socket) -> None:
        self.id, self.sock = ident, sock
        self.inbox = bytearray()
        self.outbox = bytearray()


class LimitServer:
    """Serves every shared limit of one run from a thread of the driver.

    The protocol is one JSON object per line. Requests: `define` (name,
    max_concurrency, per_minute; answered with the settings in force: the first
    definition, or with `latest_wins` this one), `acquire`
    (name, costs; answered when granted), `release` (name, of), `set_max` (name,
    value), `pause` (name, seconds), `get` (name; answered with the current
    settings). Answers carry the request's `id`.
    """

    def __init__(self, *, latest_wins: bool = False) -> None:
        self.latest_wins = latest_wins
        self._dir = tempfile.mkdtemp(prefix="stillhouse-limits-")
        path = os.path.join(self._dir, "socket")
        if hasattr(socket, "AF_UNIX") and len(path.encode()) < 100:  # else 127.0.0.1
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(path)
            self.address = f"unix:{path}"
        else:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.bind(("127.0.0.1", 0))
            self.address = f"tcp:127.0.0.1:{self._listener.getsockname()[1]}"
        self._listener.listen(256)
        self._listener.setblocking(False)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_reader, selectors.EVENT_READ, "wake")
        self._limits: dict[str, _Limit] = {}
        self._due: dict[str, float] = {}  # limit -> when its rate-held first waiter may go
        self._connections: dict[int, _Connection] = {}
        self._unsent: dict[int, _Connection] = {}  # answers to write at the end of this turn
        self._ids = itertools.count(1)
        self._closing = False
        self._holds = 0  # runs stopping: while any, no slot is granted (`hold`)
        self._hold_lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="stillhouse-limits", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving; every connection closes (its clients' waiters fail)."""
        if self._closing:
            return
        self._closing = True
        self._wake()
        self._thread.join(10)
        for connection in list(self._connections.values()):
            connection.sock.close()
        self._connections.clear()
        self._selector.close()
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def hold(self) -> Callable[[], None]:
        """Grant no slot until the returned function is called (a run stopping: a call it
        has not sent waits until its batch is given up, instead of being paid for and
        dropped). Requests still queue; holds from several runs add up."""
        with self._hold_lock:
            self._holds += 1  # the loop reads it; `_wake` makes it look again
        released = False

        def release() -> None:
            nonlocal released
            with self._hold_lock:
                if released:
                    return
                released = True
                self._holds -= 1
            self._wake()

        return release

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    # -- the loop ------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._closing:
                timeout = None
                if self._due:
                    timeout = max(0.0, min(self._due.values()) - time.monotonic())
                for key, mask in self._selector.select(timeout):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_reader.recv(64)
                        for name in self._limits:  # a hold lifted: waiters may go now
                            self._pump(name)
                    else:
                        if mask & selectors.EVENT_WRITE:
                            self._flush(key.data)
                        if mask & selectors.EVENT_READ:
                            self._read(key.data)
                now = time.monotonic()
                for name in [n for n, due in self._due.items() if due <= now]:
                    self._pump(name)
                while self._unsent:  # one write per connection and turn, not per answer
                    self._flush(self._unsent.popitem()[1])
        except Exception:  # a bug here would hang every step waiting for a slot
            logger.exception("The shared-limit server failed; steps waiting for a slot will fail.")
            for connection in list(self._connections.values()):
                connection.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            connection = _Connection(next(self._ids), sock)
            self._connections[connection.id] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(connection)
            return
        connection.inbox += data
        while (end := connection.inbox.find(b"\n")) >= 0:
            line = bytes(connection.inbox[:end])
            del connection.inbox[: end + 1]
            if connection.id not in self._connections:
                return
            try:
                self._handle(connection, json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                logger.error("A shared-limit client sent %r (%s); closing its connection.", line[:200], exc)
                self._drop(connection)
                return

    def _handle(self, connection: _Connection, message: dict[str, Any]) -> None:
        op, name = message["op"], message["name"]
        if op == "define":
            settings = (message.get("max_concurrency"), message.get("per_minute"), time.monotonic())
            limit = self._limits.get(name)
            if limit is None:
                limit = self._limits[name] = _Limit(*settings)
            elif self.latest_wins and limit.defined != _Limit.settings(*settings[:2]):
                limit.define(*settings)
                self._pump(name)  # more slots or a faster rate may let waiters go now
            self._send(connection, {"id": message["id"], **limit.defined})
            return
        limit = self._limits[name]
        if op == "acquire":
            limit.waiting[connection.id, message["id"]] = message.get("costs")
        elif op == "release":
            limit.release((connection.id, message["of"]))
        elif op == "set_max":
            limit.max_concurrency = int(message["value"])
        elif op == "pause":
            limit.pause(float(message["seconds"]), time.monotonic())
        elif op == "get":
            self._send(connection, {
                "id": message["id"], "max_concurrency": limit.max_concurrency,
                "held": len(limit.held), "waiting": len(limit.waiting),
            })
            return
        else:
            raise ValueError(f"unknown op {op!r}")
        self._pump(name)

    def _pump(self, name: str) -> None:
        if self._holds:
            self._due.pop(name, None)  # looked at again when the hold is lifted
            return
        granted, wait = self._limits[name].grant(time.monotonic())
        if wait is None:
            self._due.pop(name, None)
        else:
            self._due[name] = time.monotonic() + wait
        for connection_id, request in granted:
            connection = self._connections.get(connection_id)
            if connection is not None:
                self._send(connection, {"id": request, "ok": True})

    def _send(self, connection: _Connection, message: dict[str, Any]) -> None:
        connection.outbox += json.dumps(message, separators=(",", ":")).encode() + b"\n"
        self._unsent[connection.id] = connection

    def _flush(self, connection: _Connection) -> None:
        if connection.id not in self._connections:
            return
        try:
            sent = connection.sock.send(connection.outbox) if connection.outbox else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(connection)
            return
        del connection.outbox[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if connection.outbox else 0)
        if self._selector.get_key(connection.sock).events != events:
            self._selector.modify(connection.sock, events, connection)

    def _drop(self, connection: _Connection) -> None:
        """The client is gone (it closed, or its process died): free what it held."""
        if self._connections.pop(connection.id, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        connection.sock.close()
        for name, limit in self._limits.items():
            if limit.drop(connection.id):
                self._pump(name)


# -- the client side (one connection per process and server) ----------------------------


def _connect(address: str) -> socket.socket:
    kind, _, where = address.partition(":")
    try:
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(where)
        elif kind == "tcp":
            host, _, port = where.rpartition(":")
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            raise InvalidLimitError(
                f"${ADDRESS_ENV} is {address!r}, which is not a limit server address "
                "('unix:<path>' or 'tcp:<host>:<port>'). Unset it: runs set it themselves."
            )
    except OSError as exc:
        raise LimitError(
            f"The shared-limit server at {address!r} cannot be reached ({exc}). The run that "
            f"served it has ended or died; ${ADDRESS_ENV} is only valid during that run, and "
            "only on its machine."
        ) from exc
    return sock


class _Client:
    """This process's connection to one limit server; a reader thread routes the answers."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = _connect(address)
        self.closed: str | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, Callable[[dict[str, Any]], None]] = {}
        self._sent: dict[str, str] = {}  # name -> the settings this client defined it with last
        self._warned: set[tuple[str, str]] = set()
        self._reader = threading.Thread(target=self._read, name="stillhouse-limits-client", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        reason = "the run's limit server closed the connection (the run ended or its driver died)"
        try:
            with self.sock.makefile("rb") as lines:
                for line in lines:
                    message = json.loads(line)
                    callback = self._waiting.pop(message["id"], None)
                    if callback is not None:
                        callback(message)
        except (OSError, ValueError) as exc:
            reason = f"the connection to the limit server failed ({exc})"
        with self._lock:
            self.closed = reason
            waiting, self._waiting = self._waiting, {}
        for callback in waiting.values():
            callback({"error": reason})

    def send(self, message: dict[str, Any], on_answer: Callable[[dict[str, Any]], None] | None = None) -> int:
        data = message
        with self._lock:
            if self.closed:
                raise LimitError(f"Shared limit {message.get('name')!r} is unavailable: {self.closed}.")
            ident = next(self._ids)
            if on_answer is not None:
                self._waiting[ident] = on_answer
                data = {**message, "id": ident}
            try:
                self.sock.sendall(json.dumps(data, separators=(",", ":")).encode() + b"\n")
            except OSError as exc:
                self._waiting.pop(ident, None)
                raise LimitError(
                    f"Shared limit {message.get('name')!r} is unavailable: the limit server at "
                    f"{self.address!r} cannot be written to ({exc})."
                ) from exc
        return ident

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        answered = threading.Event()
        box: dict[str, Any] = {}

        def settle(answer: dict[str, Any]) -> None:
            box.update(answer)
            answered.set()

        self.send(message, settle)
        answered.wait()
        return _checked(box, message["name"])

    def define(self, limit: SharedLimit) -> None:
        asked = {"max_concurrency": limit._max_concurrency, "per_minute": limit._per_minute}
        settings = json.dumps(asked, sort_keys=True)
        if self._sent.get(limit.name) == settings:
            return
        answer = self.call({"op": "define", "name": limit.name, **asked})
        self._sent[limit.name] = settings
        first = {"max_concurrency": answer.get("max_concurrency"), "per_minute": answer.get("per_minute")}
        if first != asked and (limit.name, settings) not in self._warned:
            self._warned.add((limit.name, settings))
            logger.warning(
                "shared_limit(%r) was first defined in this run with max_concurrency=%r, "
                "per_minute=%r; this call's max_concurrency=%r, per_minute=%r are ignored. Give "
                "every call of one name the same settings.",
                limit.name, first["max_concurrency"], first["per_minute"],
                asked["max_concurrency"], asked["per_minute"],
            )

    def acquire_sync(self, name: str, costs: Costs | None) -> int:
        answered = threading.Event()
        box: dict[str, Any] = {}

        def settle(answer: dict[str, Any]) -> None:
            box.update(answer)
            answered.set()

        ident = self.send({"op": "acquire", "name": name, "costs": costs}, settle)
        try:
            answered.wait()
        except BaseException:  # Ctrl+C while waiting: withdraw (or give back) the slot
            self.release(name, ident)
            raise
        _checked(box, name)
        return ident

    async def acquire(self, name: str, costs: Costs | None) -> int:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()

        def settle(answer: dict[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(_resolve, future, answer)
            except RuntimeError:  # the loop is closed: nobody will use the slot
                if answer.get("ok"):
                    self.release(name, answer["id"])

        ident = self.send({"op": "acquire", "name": name, "costs": costs}, settle)
        try:
            answer = await future
        except BaseException:  # cancelled (a timeout, a stop): withdraw or give back
            self.release(name, ident)
            raise
        _checked(answer, name)
        return ident

    def release(self, name: str, ident: int) -> None:
        with contextlib.suppress(LimitError):  # the server is gone: nothing is held there
            self.send({"op": "release", "name": name, "of": ident})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(5)  # a run leaves no thread of its limits behind


def _resolve(future: asyncio.Future[dict[str, Any]], answer: dict[str, Any]) -> None:
    if not future.done():
        future.set_result(answer)


def _checked(answer: dict[str, Any], name: str) -> dict[str, Any]:
    if "error" in answer:
        raise LimitError(f"Shared limit {name!r} is unavailable: {answer['error']}.")
    return answer


_registry_lock = threading.Lock()
_clients: dict[str, _Client] = {}
_local: LimitServer | None = None


def _client() -> _Client:
    """This process's client of the current server: the run's, else a process-local one."""
    global _local
    with _registry_lock:
        address = os.environ.get(ADDRESS_ENV)
        if not address:
            if _local is None:
                # No run to scope a definition: a limit takes the settings of the handle used last.
                _local = LimitServer(latest_wins=True)
                atexit.register(_local.close)
            address = _local.address
        client = _clients.get(address)
        if client is None or client.closed:
            client = _clients[address] = _Client(address)
        return client


def _forget(address: str) -> None:
    with _registry_lock:
        client = _clients.pop(address, None)
    if client is not None:
        client.close()


def _after_fork_in_child() -> None:
    # The parent's connections are its own: a child that kept them open would keep the
    # parent's slots alive after the parent died. Close this process's copies.
    global _registry_lock, _local, _runs
    _registry_lock = threading.Lock()
    _runs = _RunServer()  # the parent's server thread is not in this process
    for client in _clients.values():
        with contextlib.suppress(OSError):
            os.close(client.sock.detach())  # detach: the reader's file object has a reference
    _clients.clear()
    _local = None


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the public API ----------------------------------------------------------------------


class SharedLimit:
    """A handle on the limit called `name`; every handle with that name shares it.

    It holds no connection and pickles by name and settings, so a step may create it
    anywhere (`__init__`, `load()`) and carry it to its workers. Use `slot()` in async
    code and `slot_sync()` in sync code; both wait, in order of arrival, until a slot
    is free and every rate allows the slot's `costs`.
    """

    __slots__ = ("_max_concurrency", "_per_minute", "name")

    def __init__(self, name: str, max_concurrency: int | None = None, per_minute: Costs | None = None) -> None:
        self.name = name
        self._max_concurrency = max_concurrency
        self._per_minute = dict(per_minute) if per_minute else None

    def __repr__(self) -> str:
        return (f"SharedLimit({self.name!r}, max_concurrency={self._max_concurrency!r}, "
                f"per_minute={self._per_minute!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return SharedLimit, (self.name, self._max_concurrency, self._per_minute)

    def _client(self) -> _Client:
        client = _client()
        client.define(self)
        return client

    @contextlib.asynccontextmanager
    async def slot(self, costs: Costs | None = None) -> AsyncIterator[None]:
        """`async with limit.slot(costs={"requests": 1}):` holds one slot for the block."""
        costs = _check_costs(self.name, costs)
        client = self._client()
        ident = await client.acquire(self.name, costs)
        try:
            yield
        finally:
            client.release(self.name, ident)

    @contextlib.contextmanager
    def slot_sync(self, costs: Costs | None = None) -> Iterator[None]:
        """`with limit.slot_sync():` the same as `slot()`, blocking this thread while it waits."""
        costs = _check_costs(self.name, costs)
        client = self._client()
        ident = client.acquire_sync(self.name, costs)
        try:
            yield
        finally:
            client.release(self.name, ident)

    def set_max_concurrency(self, n: int) -> None:
        """Change how many slots the limit has, for every process of the run (AIMD)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidLimitError(
                f"set_max_concurrency({n!r}) on shared limit {self.name!r}: pass a whole number >= 1."
            )
        self._client().send({"op": "set_max", "name": self.name, "value": n})

    def pause(self, seconds: float) -> None:
        """Grant no slot to anyone for `seconds`, in every process of the run: the
        service said its budget is spent until then (a quota's reset, a `Retry-After`).
        Slots held stay held; an earlier pause that ends later is kept."""
        if not _positive(seconds):
            raise InvalidLimitError(f"pause({seconds!r}) on shared limit {self.name!r}: pass seconds > 0.")
        self._client().send({"op": "pause", "name": self.name, "seconds": float(seconds)})

    @property
    def max_concurrency(self) -> int | None:
        """How many slots the limit has now (None: no concurrency limit).

        A round trip to the limit server (a fraction of a millisecond): read it when
        deciding, not once per row."""
        return self._client().call({"op": "get", "name": self.name})["max_concurrency"]

    @property
    def per_minute(self) -> dict[str, float] | None:
        """The rates this handle asked for (the first definition in the run wins)."""
        return dict(self._per_minute) if self._per_minute else None


def shared_limit(
    name: str, max_concurrency: int | None = None, per_minute: Costs | None = None
) -> SharedLimit:
    """The limit called `name`: one for every step, replica and process of the run.

    Args:
        name: What the limit guards, e.g. an endpoint's URL and model.
        max_concurrency: How many slots may be held at once (None: no limit).
        per_minute: `{unit: amount}` each unit's budget per minute, e.g.
            `{"requests": 500, "tokens": 30_000}` (any unit names).

    The first definition of a name in a run wins; a later one with other settings is
    logged and ignored. Outside a run the limit is shared by this process only and has
    the settings of the handle that used it last (slots held stay held), so a notebook
    that makes a step again with new limits gets them.
    """
    if not isinstance(name, str) or not name:
        raise InvalidLimitError(f"shared_limit name {name!r}: pass a non-empty string.")
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
    ):
        raise InvalidLimitError(
            f"shared_limit({name!r}) max_concurrency={max_concurrency!r}: pass a whole number "
            ">= 1, or None for no concurrency limit."
        )
    if per_minute is not None:
        if not isinstance(per_minute, Mapping):
            raise InvalidLimitError(
                f"shared_limit({name!r}) per_minute={per_minute!r}: pass a dict of unit -> "
                'amount per minute, e.g. {"requests": 500}.'
            )
        for unit, amount in per_minute.items():
            if not isinstance(unit, str) or not _positive(amount):
                raise InvalidLimitError(
                    f"shared_limit({name!r}) per_minute[{unit!r}]={amount!r}: units are strings "
                    "and amounts numbers > 0."
                )
    return SharedLimit(name, max_concurrency, per_minute)


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_costs(name: str, costs: Costs | None) -> dict[str, float] | None:
    if costs is None:
        return None
    if not isinstance(costs, Mapping):
        raise InvalidLimitError(f"A slot of shared limit {name!r} got costs={costs!r}: pass a dict of unit -> amount.")
    for unit, amount in costs.items():
        if not isinstance(unit, str) or not (amount == 0 or _positive(amount)):
            raise InvalidLimitError(
                f"A slot of shared limit {name!r} got costs[{unit!r}]={amount!r}: units are "
                "strings and amounts numbers >= 0."
            )
    return dict(costs)


# -- for the engine and executors ----------------------------------------------------------


class _RunServer:
    """The server of the runs going on in this process.

    Runs that overlap in one process (embedded in threads) share it, and so share
    their limits by name: in-process steps read the address from the process's
    environment, which only one server can own at a time. The last run to end stops it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.server: LimitServer | None = None
        self.users = 0
        self.previous: str | None = None

    def enter(self) -> str:
        with self.lock:
            if self.server is None:
                self.server = LimitServer()
                self.previous = os.environ.get(ADDRESS_ENV)
                os.environ[ADDRESS_ENV] = self.server.address
            self.users += 1
            return self.server.address

    def exit(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users or self.server is None:
                return
            server, self.server = self.server, None
            if os.environ.get(ADDRESS_ENV) == server.address:
                if self.previous is None:
                    os.environ.pop(ADDRESS_ENV, None)
                else:
                    os.environ[ADDRESS_ENV] = self.previous
        _forget(server.address)
        server.close()

    def hold(self) -> Callable[[], None]:
        """Hold the slots of the server of the runs going on (`hold_slots`)."""
        with self.lock:
            server = self.server
        return server.hold() if server is not None else (lambda: None)


_runs = _RunServer()


def hold_slots() -> Callable[[], None]:
    """For the engine, when a run stops: the run's limit server grants no more slots until
    the returned function is called (overlapping runs of this process share the server,
    and wait as long). A no-op outside a run."""
    return _runs.hold()


@contextlib.contextmanager
def serve_limits() -> Iterator[str]:
    """Serve the shared limits of a run; `$STILLHOUSE_LIMITS` names the server meanwhile.

    Overlapping runs of one process share one server (see `_RunServer`)."""
    address = _runs.enter()
    try:
        yield address
    finally:
        _runs.exit()


def worker_environment() -> dict[str, str]:
    """Environment variables a worker process needs to share this run's limits.

    Workers that inherit the driver's environment (fork, spawn, threads) have them;
    an executor that starts processes otherwise (a fork server, Ray actors) passes
    these. Empty outside a run."""
    address = os.environ.get(ADDRESS_ENV)
    return {ADDRESS_ENV: address} if address else {}
