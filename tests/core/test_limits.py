"""Shared limits: the limit's rules on a fake clock, then the real server and clients."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

from stillhouse.core import SharedLimit, shared_limit
from stillhouse.core.errors import InvalidLimitError, LimitError
from stillhouse.core.limits import (
    ADDRESS_ENV,
    LimitServer,
    _Client,
    _Limit,
    hold_slots,
    serve_limits,
    worker_environment,
)

# -- the rules, on a fake clock -----------------------------------------------------------


def keys(granted: list[tuple[int, int]]) -> list[int]:
    return [request for _, request in granted]


def test_slots_are_granted_in_arrival_order_up_to_max_concurrency():
    limit = _Limit(2, None, now=0.0)
    for request in range(1, 5):
        limit.waiting[7, request] = None
    granted, wait = limit.grant(0.0)
    assert keys(granted) == [1, 2] and wait is None
    limit.release((7, 1))
    assert keys(limit.grant(0.0)[0]) == [3]
    limit.max_concurrency = 4  # set_max_concurrency
    assert keys(limit.grant(0.0)[0]) == [4]


def test_a_rate_starts_with_one_second_of_budget_then_refills_continuously():
    limit = _Limit(None, {"requests": 600}, now=0.0)  # 10 a second
    for request in range(25):
        limit.waiting[1, request] = None
    granted, wait = limit.grant(0.0)
    assert len(granted) == 10 and wait == pytest.approx(0.1)
    assert len(limit.grant(0.55)[0]) == 5
    assert len(limit.grant(1.55)[0]) == 10  # never more than the bucket holds
    assert limit.grant(1.55)[0] == []


def test_a_pause_grants_nothing_until_it_ends_and_the_later_end_wins():
    limit = _Limit(None, None, now=0.0)
    limit.pause(2.0, now=0.0)
    limit.pause(1.0, now=0.5)  # ends at 1.5: the pause until 2.0 stays
    limit.waiting[1, 1] = limit.waiting[1, 2] = None
    assert limit.grant(0.5) == ([], pytest.approx(1.5))
    assert keys(limit.grant(2.0)[0]) == [1, 2]


def test_new_settings_keep_held_slots_and_unchanged_rates():
    limit = _Limit(1, {"requests": 600}, now=0.0)
    limit.waiting[1, 1] = limit.waiting[1, 2] = None
    assert keys(limit.grant(0.0)[0]) == [1]
    requests = limit.buckets["requests"]
    limit.define(2, {"requests": 600, "tokens": 60}, now=0.0)
    assert limit.buckets["requests"] is requests  # its budget so far is kept
    assert limit.held == {(1, 1)} and keys(limit.grant(0.0)[0]) == [2]
    limit.define(2, {"requests": 1200}, now=0.0)
    assert limit.buckets["requests"] is not requests and set(limit.buckets) == {"requests"}
    assert limit.defined == {"max_concurrency": 2, "per_minute": {"requests": 1200}}


def test_costs_take_from_each_unit_and_unmetered_units_are_free():
    limit = _Limit(None, {"requests": 6000, "tokens": 1200}, now=0.0)  # 20 tokens a second
    for request in range(5):
        limit.waiting[1, request] = {"requests": 1, "tokens": 8, "images": 3}
    granted, wait = limit.grant(0.0)
    assert len(granted) == 2 and wait == pytest.approx(0.2)  # 20 - 16 = 4: 4 short of 8
    assert len(limit.grant(0.2)[0]) == 1


def test_a_cost_above_the_bucket_waits_for_a_full_bucket_and_leaves_a_debt():
    limit = _Limit(None, {"tokens": 60}, now=0.0)  # 1 a second, holds 1
    limit.waiting[1, 1] = {"tokens": 3}
    limit.waiting[1, 2] = {"tokens": 3}
    granted, wait = limit.grant(0.0)
    assert keys(granted) == [1] and wait == pytest.approx(3.0)  # from -2 back to 1
    assert limit.grant(2.9)[0] == []
    assert keys(limit.grant(3.0)[0]) == [2]


def test_a_dropped_connection_frees_its_slots_and_its_requests():
    limit = _Limit(1, None, now=0.0)
    limit.waiting[1, 1] = None
    limit.waiting[1, 2] = None
    limit.waiting[2, 1] = None
    assert keys(limit.grant(0.0)[0]) == [1]
    assert limit.drop(1)
    assert limit.grant(0.0)[0] == [(2, 1)]


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": ""}, "non-empty string"),
        ({"max_concurrency": 0}, "max_concurrency=0"),
        ({"max_concurrency": 2.5}, "whole number"),
        ({"per_minute": {"requests": -1}}, r"per_minute\['requests'\]=-1"),
        ({"per_minute": [("requests", 1)]}, "dict of unit"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(InvalidLimitError, match=match):
        shared_limit(**{"name": "api", **kwargs})


def test_bad_costs_and_sizes_are_named():
    limit = shared_limit("bad-costs", max_concurrency=1)
    with pytest.raises(InvalidLimitError, match=r"costs\['tokens'\]='many'"), limit.slot_sync(costs={"tokens": "many"}):
        pass
    with pytest.raises(InvalidLimitError, match="set_max_concurrency"):
        limit.set_max_concurrency(0)


# -- the server and its clients -----------------------------------------------------------


def holders_peak(limit: SharedLimit, workers: int, per_worker: int, *, hold: float = 0.01) -> int:
    inside = peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, peak
        for _ in range(per_worker):
            with limit.slot_sync():
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                time.sleep(hold)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return peak


def test_outside_a_run_a_limit_is_shared_by_the_threads_of_this_process():
    assert ADDRESS_ENV not in os.environ
    peak = holders_peak(shared_limit("threads", max_concurrency=2), workers=6, per_worker=5)
    assert peak <= 2


def test_async_slots_share_the_limit_and_a_cancelled_wait_takes_no_slot():
    limit = shared_limit("async", max_concurrency=2)
    inside = peak = 0

    async def one() -> None:
        nonlocal inside, peak
        async with limit.slot():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.005)
            inside -= 1

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(40)))
        async with limit.slot(), limit.slot():  # both slots held: a third one waits
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(limit.slot().__aenter__(), 0.2)
        async with limit.slot(), limit.slot():  # the cancelled request holds nothing
            pass

    asyncio.run(asyncio.wait_for(main(), 60))
    assert 1 <= peak <= 2  # that 2 can be held at once is shown in main()


def test_set_max_concurrency_is_seen_through_every_handle():
    first = shared_limit("aimd", max_concurrency=4)
    assert first.max_concurrency == 4
    first.set_max_concurrency(2)
    assert shared_limit("aimd", max_concurrency=4).max_concurrency == 2
    assert holders_peak(first, workers=4, per_worker=3) <= 2


def test_a_pause_holds_every_waiter_through_the_server_then_lets_them_go():
    limit = shared_limit("paused", max_concurrency=4)
    with limit.slot_sync():
        pass  # the server knows the limit
    started = time.monotonic()
    limit.pause(0.3)
    with limit.slot_sync():  # waits for the pause to end, without polling
        waited = time.monotonic() - started
    assert waited >= 0.25
    with pytest.raises(InvalidLimitError, match="seconds > 0"):
        limit.pause(0)


def test_the_first_definition_wins_and_a_different_one_is_logged(caplog):
    with serve_limits():
        shared_limit("defined", max_concurrency=3).max_concurrency  # noqa: B018
        with caplog.at_level(logging.WARNING, logger="stillhouse.limits"):
            # A handle that reaches the server through another connection (another process).
            client = _Client(os.environ[ADDRESS_ENV])
            try:
                client.define(shared_limit("defined", max_concurrency=9))
                answer = client.call({"op": "get", "name": "defined"})
            finally:
                client.close()
    assert answer["max_concurrency"] == 3
    assert "first defined in this run with max_concurrency=3" in caplog.text


def test_outside_a_run_the_handle_used_last_sets_the_limit_and_lets_a_waiter_go():
    assert ADDRESS_ENV not in os.environ
    narrow = shared_limit("redefined", max_concurrency=1)
    held, waiter_in = threading.Event(), threading.Event()
    release = threading.Event()

    def hold() -> None:
        with narrow.slot_sync():
            held.set()
            release.wait(60)

    def wait() -> None:
        with narrow.slot_sync():
            waiter_in.set()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        waiter = threading.Thread(target=wait)
        waiter.start()
        assert not waiter_in.wait(0.2)  # one slot, and it is held
        wide = shared_limit("redefined", max_concurrency=2)  # a notebook makes its step again
        assert wide.max_concurrency == 2
        assert waiter_in.wait(30)  # the second slot is there at once, for the one waiting
        waiter.join(30)
    finally:
        release.set()
        holder.join(30)
    assert wide.max_concurrency == 2
    assert narrow.max_concurrency == 1  # the notebook's first cell run again


def test_in_a_run_a_handle_with_other_settings_keeps_the_first_and_warns_once(caplog):
    with serve_limits():
        assert shared_limit("kept", max_concurrency=3).max_concurrency == 3
        other = shared_limit("kept", max_concurrency=9)
        with caplog.at_level(logging.WARNING, logger="stillhouse.limits"):
            assert other.max_concurrency == 3
            assert other.max_concurrency == 3
    assert caplog.text.count("first defined in this run with max_concurrency=3") == 1


def test_a_handle_pickles_by_name_and_settings():
    limit = shared_limit("pickled", max_concurrency=2, per_minute={"requests": 60})
    copy = pickle.loads(pickle.dumps(limit))
    assert (copy.name, copy.per_minute) == ("pickled", {"requests": 60})
    assert copy.max_concurrency == 2


def test_serve_limits_sets_the_address_for_the_run_and_restores_it():
    assert worker_environment() == {}
    with serve_limits() as address:
        assert worker_environment() == {ADDRESS_ENV: address}
        assert shared_limit("in-run", max_concurrency=1).max_concurrency == 1
    assert ADDRESS_ENV not in os.environ


def test_a_run_that_holds_its_slots_grants_none_until_it_releases_them():
    """What a stopping run does (engine/run.py): a call that has not got its slot does not
    get one, so it is not sent; a slot already held is kept, and given back as usual."""
    with serve_limits():
        limit = shared_limit("held", max_concurrency=4)
        granted = threading.Event()
        with limit.slot_sync():  # held before the hold: kept
            release = hold_slots()

            def wait_for_a_slot() -> None:
                with limit.slot_sync():
                    granted.set()

            waiter = threading.Thread(target=wait_for_a_slot, daemon=True)
            waiter.start()
            # Three free slots, and still none is granted while the hold lasts.
            assert not granted.wait(0.5)
        assert not granted.wait(0.2)  # a slot given back lets nobody go either
        release()
        release()  # once is enough; a second call changes nothing
        assert granted.wait(10)
        waiter.join(10)
    assert hold_slots()() is None  # outside a run: nothing to hold


def test_waiters_fail_with_a_clear_error_when_the_server_goes_away():
    limit = shared_limit("going", max_concurrency=1)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            with limit.slot_sync():
                pass
        except LimitError as exc:
            errors.append(exc)

    with serve_limits() as address:
        holder = _Client(address)  # another process's connection, holding the only slot
        try:
            holder.define(limit)
            holder.acquire_sync("going", None)
            waiter = threading.Thread(target=wait)
            waiter.start()
            while limit._client().call({"op": "get", "name": "going"})["waiting"] == 0:
                time.sleep(0.01)
        except BaseException:
            holder.close()
            raise
    # The run ended while the slot was held and another was awaited.
    holder.close()
    waiter.join(30)
    assert not waiter.is_alive()
    assert errors and "unavailable" in str(errors[0])


HOLDER = """
import sys, time
from stillhouse.core import shared_limit
limit = shared_limit("dead", max_concurrency=1)
with limit.slot_sync():
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_slots_of_a_killed_process_are_released():
    with serve_limits() as address:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER], env={**os.environ, ADDRESS_ENV: address},
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "held"
            limit = shared_limit("dead", max_concurrency=1)
            granted = threading.Event()

            def wait() -> None:
                with limit.slot_sync():
                    granted.set()

            waiter = threading.Thread(target=wait, daemon=True)
            waiter.start()
            while limit._client().call({"op": "get", "name": "dead"})["waiting"] == 0:
                time.sleep(0.01)
            assert not granted.is_set()
            holder.send_signal(signal.SIGKILL)
            assert granted.wait(30), "the killed holder's slot was never released"
            waiter.join(30)
        finally:
            holder.kill()
            holder.wait(30)
            holder.stdout.close()


def test_a_long_socket_path_falls_back_to_tcp_on_localhost(tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr("tempfile.tempdir", str(deep))
    server = LimitServer()
    try:
        assert server.address.startswith("tcp:127.0.0.1:")
        monkeypatch.setenv(ADDRESS_ENV, server.address)
        assert holders_peak(shared_limit("tcp", max_concurrency=1), workers=3, per_worker=2) == 1
    finally:
        server.close()


def test_overlapping_runs_of_one_process_share_one_server_until_the_last_ends():
    with serve_limits() as first:
        limit = shared_limit("overlap", max_concurrency=1)
        with serve_limits() as second:
            assert second == first
        with limit.slot_sync():  # the first run's limits still work after the second ended
            assert os.environ[ADDRESS_ENV] == first
    assert ADDRESS_ENV not in os.environ
