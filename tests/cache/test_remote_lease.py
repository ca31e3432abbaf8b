"""The lease of a remote cache (`stillhouse.cache.lease.Lease`): one holder, renewed while the run
lives, never renewed or deleted by a run that lost it, taken over from a dead owner."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from stillhouse.cache import lease as leases
from stillhouse.core import (
    GeneratorStep,
    GeneratorStepOutput,
    Pipeline,
    Step,
    StepInput,
    StepOutput,
)
from stillhouse.core.errors import CacheError, CacheLockedError
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.core.testing import Identity
from tests.support.local_servers import moto_s3

pytestmark = pytest.mark.timeout(120)

LAG = 0.05  # seconds per call of `LaggyMemory`: the round trip of a remote store


class LaggyMemory(MemoryFileSystem):
    """memory:// with the latency of a remote store, so two runs' calls interleave."""

    protocol = ("laggymemory",)

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        time.sleep(LAG)
        return super().cat_file(path, *args, **kwargs)

    def exists(self, path: str, **kwargs: Any) -> bool:
        time.sleep(LAG)
        return super().exists(path, **kwargs)

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        time.sleep(LAG)
        super().pipe_file(path, value, *args, **kwargs)


def unique_path() -> str:
    return f"/lease-{uuid.uuid4().hex[:8]}/pipe/.lock"


def owner_of(fs: Any, path: str) -> str | None:
    try:
        return json.loads(fs.cat_file(path)).get("owner")
    except FileNotFoundError:
        return None


def race(filesystems: list[Any], path: str) -> list[Any]:
    """Start one acquirer per filesystem at the same moment; the leases they got."""
    start = threading.Barrier(len(filesystems))
    held: list[Any] = []
    refused: list[BaseException] = []

    def acquire(fs: Any) -> None:
        start.wait()
        try:
            held.append(leases.Lease(fs, path, "pipe"))
        except CacheLockedError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=acquire, args=(fs,)) for fs in filesystems]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(held) + len(refused) == len(filesystems)
    return held


def assert_one_holder(filesystems: list[Any], path: str, fs: Any) -> None:
    """Race one acquirer per filesystem: exactly one holds the lease, and `.lock` names it."""
    held = race(filesystems, path)
    try:
        assert len(held) == 1, f"{len(held)} runs hold the lease {path}"
        assert owner_of(fs, path) == held[0].owner
    finally:
        for lease in held:
            lease.release()


def test_runs_racing_for_a_lease_on_a_slow_store_yield_one_holder():
    assert_one_holder([LaggyMemory() for _ in range(4)], unique_path(), MemoryFileSystem())


def test_runs_racing_for_a_lease_on_s3_yield_one_holder(monkeypatch):
    with moto_s3(monkeypatch, "lease-race") as (_, fs):
        for round_ in range(3):
            racers = [fsspec.filesystem("s3", skip_instance_cache=True) for _ in range(4)]
            assert_one_holder(racers, f"lease-race/r{round_}/pipe/.lock", fs)


def test_runs_racing_to_take_over_an_expired_lease_yield_one_holder():
    path = unique_path()
    MemoryFileSystem().pipe_file(path, json.dumps({"owner": "gone:1:abc", "time": 0}).encode())
    assert_one_holder([LaggyMemory() for _ in range(4)], path, MemoryFileSystem())
    assert not MemoryFileSystem().glob(f"{path}.takeover-*")


def test_the_lease_lifetime_is_set_by_an_environment_variable(monkeypatch):
    monkeypatch.setenv(leases.LEASE_ENV, "2.5")
    lease = leases.Lease(MemoryFileSystem(), unique_path(), "pipe")
    lease.release()
    assert lease.seconds == 2.5
    monkeypatch.setenv(leases.LEASE_ENV, "soon")
    with pytest.raises(CacheError, match="STILLHOUSE_REMOTE_LEASE_SECONDS is 'soon'"):
        leases.Lease(MemoryFileSystem(), unique_path(), "pipe")


def test_a_run_whose_expired_lease_was_taken_over_does_not_delete_it(caplog):
    fs, path = MemoryFileSystem(), unique_path()
    first = leases.Lease(fs, path, "pipe")
    # The first run stalled: its lease was last renewed long ago, and a second run takes it.
    fs.pipe_file(path, json.dumps({"owner": first.owner, "time": 0}).encode())
    caplog.set_level(logging.WARNING, logger="stillhouse.cache")
    second = leases.Lease(fs, path, "pipe")
    assert owner_of(fs, path) == second.owner
    assert any(r.getMessage().startswith("Took over the lease") for r in caplog.records)
    first.release()
    assert owner_of(fs, path) == second.owner
    second.release()
    assert not fs.exists(path)
    assert not fs.glob(f"{path}.takeover-*")


def test_a_stalled_run_whose_lease_was_taken_and_released_meanwhile_stops_writing():
    """The run stalls past its lease's lifetime (SIGSTOP, a machine asleep); another run
    takes the lease over, finishes and deletes it. When the first run wakes, the missing
    lease must not read as "deleted by hand": that run would take it again and write over
    what the other run left (found by a QA pass: 135 of 300 rows replaced)."""
    fs, path = MemoryFileSystem(), unique_path()
    first = leases.Lease(fs, path, "pipe", seconds=0.5)
    with first._guard:  # stalled: its heartbeat cannot renew
        time.sleep(0.7)
        second = leases.Lease(fs, path, "pipe", seconds=0.5)  # takes the expired lease over
        assert owner_of(fs, path) == second.owner
        second.release()  # finished: the lease is gone
        assert not fs.exists(path)
    with pytest.raises(CacheLockedError, match="which has since finished and removed the lease"):
        first.check()  # its next write, before or after the heartbeat runs again
    assert not fs.exists(path)  # and it did not take the lease again
    first.release()


def test_a_lease_deleted_by_hand_while_its_run_renews_it_is_held_again():
    fs, path = MemoryFileSystem(), unique_path()
    lease = leases.Lease(fs, path, "pipe", seconds=30)
    fs.rm_file(path)
    lease.refresh()
    assert owner_of(fs, path) == lease.owner
    lease.check()
    lease.release()


class TakenOver(Step):
    """Hands the lease to another run (as a run on another machine taking over an expired
    lease would) on its first batch, then gives the heartbeat time to notice."""

    lock: str = ""

    def process(self, inputs: StepInput) -> StepOutput:
        fs = fsspec.filesystem("memory")
        if owner_of(fs, self.lock) != "another-machine:1:abc":
            record = {"owner": "another-machine:1:abc", "time": time.time(), "seconds": 60}
            fs.pipe_file(self.lock, json.dumps(record).encode())
            time.sleep(3.0)  # the heartbeat (every 0.1 s) gets 30 chances to notice, even on a busy machine
        yield inputs


def test_a_run_whose_lease_was_taken_over_stops_and_leaves_the_lease_alone(monkeypatch):
    monkeypatch.setattr(leases, "LEASE_SECONDS", 1.0)  # renewed every 0.1 s
    name = f"stolen-{uuid.uuid4().hex[:6]}"
    lock = f"/{name}/{name}/.lock"
    with Pipeline(name=name, cache_dir=f"memory://{name}", executor="sync") as pipeline:
        loader = LoadDataFromDicts(name="load", data=[{"x": i} for i in range(4)], batch_size=1)
        loader >> TakenOver(name="taken", lock=lock)
    with pytest.raises(CacheLockedError, match="took over") as info:
        pipeline.run(progress=False)
    assert f"memory:///{name}/{name}" in str(info.value)
    fs = fsspec.filesystem("memory")
    assert owner_of(fs, lock) == "another-machine:1:abc"  # neither renewed nor deleted


def test_the_heartbeat_keeps_the_lease_of_a_run_that_writes_nothing(monkeypatch):
    monkeypatch.setattr(leases, "LEASE_SECONDS", 2.0)  # renewed every 0.2 s: 10 chances per lifetime
    fs, path = MemoryFileSystem(), unique_path()
    lease = leases.Lease(fs, path, "pipe")
    try:
        time.sleep(3.0)  # longer than the lease lives unless renewed
        with pytest.raises(CacheLockedError, match="still running on this machine"):
            leases.Lease(fs, path, "pipe")
        assert owner_of(fs, path) == lease.owner
    finally:
        lease.release()
    time.sleep(0.3)
    assert not fs.exists(path)  # the heartbeat stopped with the release
    leases.Lease(fs, path, "pipe").release()


def test_a_lease_left_by_a_killed_process_of_this_machine_is_taken_over(tmp_path, caplog):
    lock = tmp_path / "pipe" / ".lock"
    lock.parent.mkdir()
    code = (
        "import os, signal, sys, fsspec\n"
        "from stillhouse.cache.lease import Lease\n"
        "Lease(fsspec.filesystem('file'), sys.argv[1], 'pipe')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(lock)], timeout=60, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert lock.exists()  # a fresh lease, left by a process that is gone
    caplog.set_level(logging.WARNING, logger="stillhouse.cache")
    fs = fsspec.filesystem("file")
    lease = leases.Lease(fs, str(lock), "pipe")
    try:
        assert owner_of(fs, str(lock)) == lease.owner
        assert any("is gone" in record.getMessage() for record in caplog.records)
    finally:
        lease.release()
    assert not lock.exists()


def test_a_live_lease_of_another_machine_says_when_it_expires_and_how_to_free_it():
    fs, path = MemoryFileSystem(), unique_path()
    record = {"owner": "elsewhere:7:abc", "time": time.time(), "seconds": 300, "pid": 7, "space": "elsewhere||"}
    fs.pipe_file(path, json.dumps(record).encode())
    with pytest.raises(CacheLockedError) as info:
        leases.Lease(fs, path, "pipe")
    message = str(info.value)
    assert "elsewhere:7:abc" in message
    assert "expires in 300 s" in message or "expires in 299 s" in message
    assert f"delete memory://{path}" in message
    assert owner_of(fs, path) == "elsewhere:7:abc"


class StealsTheLease(GeneratorStep):
    """A generator that, once done, hands the lease to another run while it unloads,
    then waits for the heartbeat to notice; the next load stage replays from the cache."""

    lock: str = ""

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        yield [{"y": 1}], True

    def unload(self) -> None:
        record = {"owner": "another-machine:1:abc", "time": time.time(), "seconds": 60}
        fsspec.filesystem("memory").pipe_file(self.lock, json.dumps(record).encode())
        time.sleep(3.0)  # the heartbeat (every 0.1 s) gets 30 chances to notice, even on a busy machine
        super().unload()


def test_a_run_whose_lease_was_taken_over_writes_no_results(monkeypatch):
    """Results replayed from the cache are written without a checkpoint write, which
    checks the lease: they must not land in a run folder another run owns, and the run
    must fail (it used to write them and end as if it had succeeded)."""
    monkeypatch.setattr(leases, "LEASE_SECONDS", 1.0)  # renewed every 0.1 s
    name = f"results-{uuid.uuid4().hex[:6]}"
    lock = f"/{name}/{name}/.lock"

    def pipeline(*, thief: bool) -> Pipeline:
        with Pipeline(name=name, cache_dir=f"memory://{name}", executor="sync") as built:
            LoadDataFromDicts(name="load", data=[{"x": i} for i in range(4)], batch_size=2) >> Identity(name="kept")
            if thief:  # another shape: a new run folder, the two steps above taken from the cache
                StealsTheLease(name="thief", lock=lock)
        return built

    pipeline(thief=False).run(progress=False)
    second = pipeline(thief=True)
    with pytest.raises(CacheLockedError, match="took over"):
        second.run(progress=False, load_groups=[["thief"], ["load", "kept"]])
    fs = fsspec.filesystem("memory")
    data = f"/{name}/{name}/{second.signature}/data"
    assert fs.exists(f"{data}/thief/_COMPLETE")  # written while the run held the lease
    written = fs.find(f"{data}/kept")
    assert written == [], f"results written after the lease was taken over: {written}"
    assert owner_of(fs, lock) == "another-machine:1:abc"
