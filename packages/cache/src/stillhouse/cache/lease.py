"""The remote cache's lock: a lease object, `<pipeline>/.lock`, naming the run that
holds it.

It is created only if absent (S3 `If-None-Match: *`; an exclusive create elsewhere;
read back to settle a tie), renewed by a heartbeat thread, and taken over when it
expired or when its owner was a process of this machine that is gone. Renewing and
releasing read it first: a run never overwrites or deletes another run's lease, and
a run that finds its lease taken over stops writing (`Lease.check`).

Not here: the local cache's lock (`lock.py`), the remote stores (`remote.py`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from stillhouse.core.errors import CacheError, CacheLockedError

logger = logging.getLogger("stillhouse.cache")

LEASE_ENV = "STILLHOUSE_REMOTE_LEASE_SECONDS"
LEASE_SECONDS = 300.0
"""How long a lease lives unless renewed (`$STILLHOUSE_REMOTE_LEASE_SECONDS` overrides
it). The heartbeat renews it every tenth of that; a run cut off from the store for
longer may be taken over, and then stops (`Lease.check`)."""
_SETTLE_SECONDS = 0.1  # between writing the lease and reading it back: a tie with a
# run that wrote at the same moment (on a store without conditional writes) is over
_ATTEMPTS = 8  # rounds of acquiring before giving up on a lease that keeps changing

_CREATE_GUARD = threading.Lock()  # memory:// lives in this process: a lock makes its create atomic


def lease_seconds() -> float:
    """The lease lifetime of a new run: `$STILLHOUSE_REMOTE_LEASE_SECONDS`, else `LEASE_SECONDS`."""
    given = os.environ.get(LEASE_ENV)
    if not given:
        return LEASE_SECONDS
    try:
        seconds = float(given)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e9:
        raise CacheError(
            f"${LEASE_ENV} is {given!r}, not a positive number of seconds. Unset it (default "
            f"{LEASE_SECONDS:.0f}) or set it to how long a remote run may go without renewing its lease."
        )
    return seconds


def create_object(fs: Any, path: str, data: bytes) -> None:
    """Write `path` only if it does not exist yet; `FileExistsError` if it does.

    One step wherever the filesystem allows it: S3's `If-None-Match: *` (s3fs
    `pipe_file(mode="create")`), a hard link on a local disk, a process lock for
    memory://. Other filesystems check, then write; `Lease` reads back what it wrote."""
    if isinstance(fs, LocalFileSystem):
        target = Path(fs._strip_protocol(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.link(partial, target)  # FileExistsError when taken
        finally:
            os.unlink(partial)
        return
    if isinstance(fs, MemoryFileSystem):
        with _CREATE_GUARD:
            fs.pipe_file(path, data, mode="create")
        return
    try:
        fs.pipe_file(path, data, mode="create")
        return
    except FileExistsError:
        raise
    except (TypeError, NotImplementedError):  # a `pipe_file` without `mode="create"`
        pass
    except OSError as exc:
        if exc.errno != errno.ENOSYS:  # an S3-compatible server without conditional writes (501)
            raise
    if fs.exists(path):
        raise FileExistsError(path)
    fs.pipe_file(path, data)


@functools.cache
def _pid_space() -> str:
    """Which processes a pid names here: the host, its boot and the pid namespace. Two
    leases with the same value can compare pids; a container elsewhere never matches."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:
            parts.append("")
    return "|".join(parts)


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def _running(pid: Any, started: Any) -> bool:
    """Whether the process `pid` of this machine (started at `started`) still runs."""
    if not isinstance(pid, int) or pid <= 0:
        return True  # nothing to check: only expiry frees it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process (PermissionError): it exists
        return True
    now = _started(pid)
    return started is None or now is None or now == started


def _number(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


class Lease:
    """`.lock` object naming the run that holds it; a heartbeat thread renews it.

    Acquiring: create it only if absent, wait a moment and read it back (the run whose
    record is there holds it). A lease that expired (`seconds` without renewal), or whose
    owner was a process of this machine that is gone (SIGKILL, OOM), is taken over:
    the taker first creates `.lock.takeover-<hash of the old lease>`, so of several
    runs finding the same dead lease only one replaces it.

    Renewing and releasing read the lease first: a run whose lease another run took
    over neither overwrites nor deletes it; `check` (called before every write of the
    store) raises `CacheLockedError` from then on."""

    def __init__(self, fs: Any, path: str, pipeline_name: str, *, seconds: float | None = None) -> None:
        self.fs, self.path, self.pipeline_name = fs, path, pipeline_name
        self.seconds = lease_seconds() if seconds is None else seconds
        self.url = fs.unstrip_protocol(path)
        self.cache = self.url.rpartition("/")[0]
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost: CacheLockedError | None = None
        self._guard = threading.Lock()  # a renewal and the release never interleave
        self._stop = threading.Event()
        self._released = False
        self._renewed = time.monotonic()
        self._acquire()
        self._beat = threading.Thread(target=self._heartbeat, name=f"stillhouse-lease-{pipeline_name}", daemon=True)
        self._beat.start()

    # -- acquiring ---------------------------------------------------------------------

    def _record(self) -> bytes:
        return json.dumps({
            "owner": self.owner, "time": time.time(), "seconds": self.seconds, "pid": os.getpid(),
            "started": _started(os.getpid()), "space": _pid_space(),
        }).encode()

    def _read(self, path: str | None = None) -> tuple[bytes, dict[str, Any]] | None:
        try:
            blob = self.fs.cat_file(path or self.path)
        except FileNotFoundError:
            return None
        try:
            held = json.loads(blob)
        except ValueError:
            held = None
        return blob, held if isinstance(held, dict) else {}

    def _acquire(self) -> None:
        for attempt in range(_ATTEMPTS):
            if attempt:
                time.sleep(_SETTLE_SECONDS * attempt)
            found = self._read()
            if found is None:
                try:
                    create_object(self.fs, self.path, self._record())
                except FileExistsError:
                    continue  # another run created it first: look at it
                if self._confirmed():
                    return
                continue
            blob, held = found
            why = self._why_free(held)
            if why is None:
                raise self._busy(held)
            if self._take_over(blob, held, why):
                return
        raise CacheLockedError(
            f"Another run of pipeline {self.pipeline_name!r} is taking the cache {self.cache} at "
            f"the same moment: its lease {self.url} kept changing. Wait for that run to finish, "
            "or give this run another name= or cache_dir=."
        )

    def _confirmed(self) -> bool:
        time.sleep(_SETTLE_SECONDS)
        found = self._read()
        return found is not None and found[1].get("owner") == self.owner

    def _why_free(self, held: dict[str, Any]) -> str | None:
        """Why the lease `held` may be taken over, or None when its run may still be going."""
        seconds = _number(held.get("seconds"), self.seconds)
        age = time.time() - _number(held.get("time"), 0.0)
        if age >= seconds:
            return f"it was last renewed {age:.0f} s ago (it expires after {seconds:.0f} s)"
        if held.get("space") == _pid_space() and not _running(held.get("pid"), held.get("started")):
            return f"its owner, process {held.get('pid')} of this machine, is gone"
        return None

    def _busy(self, held: dict[str, Any]) -> CacheLockedError:
        seconds = _number(held.get("seconds"), self.seconds)
        age = max(0.0, time.time() - _number(held.get("time"), 0.0))
        here = (f" Its process {held.get('pid')} is still running on this machine."
                if held.get("space") == _pid_space() else "")
        return CacheLockedError(
            f"Another run of pipeline {self.pipeline_name!r} ({held.get('owner')}) is using the "
            f"cache {self.cache}: its lease was renewed {age:.0f} s ago and expires in "
            f"{max(0.0, seconds - age):.0f} s unless that run renews it.{here} Wait for it to "
            "finish, or give this run another name= or cache_dir=. If no run is going (it was "
            f"killed on another machine), delete {self.url} to use the cache now."
        )

    def _take_over(self, blob: bytes, held: dict[str, Any], why: str) -> bool:
        marker = f"{self.path}.takeover-{hashlib.sha256(blob).hexdigest()[:16]}"
        try:
            create_object(self.fs, marker, self._record())
        except FileExistsError:  # another run is taking it over, or died doing so
            found = self._read(marker)
            if found is not None and time.time() - _number(found[1].get("time"), 0.0) > self.seconds:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(marker)
            return False
        try:
            again = self._read()
            if again is None or again[0] != blob:
                return False  # it changed meanwhile: look again
            self.fs.pipe_file(self.path, self._record())
            if not self._confirmed():
                return False
            logger.warning(
                "Took over the lease %s of pipeline %r from %s: %s.", self.url, self.pipeline_name,
                held.get("owner"), why,
            )
            return True
        finally:
            with contextlib.suppress(OSError):
                self.fs.rm_file(marker)

    # -- holding -----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.seconds / 10):
            try:
                self.refresh()
            except Exception as exc:  # the store may be unreachable for a moment: keep trying
                logger.warning(
                    "Could not renew the lease %s (%s: %s); the last renewal was %.0f s ago, and "
                    "another run may take it over after %.0f s.", self.url, type(exc).__name__, exc,
                    time.monotonic() - self._renewed, self.seconds,
                )
            if self.lost is not None:
                return

    def refresh(self) -> None:
        """Renew the lease if this run still holds it; if another run took it over, keep
        the error `check` raises, and leave that run's lease alone."""
        with self._guard:
            if self.lost is not None or self._released:
                return
            found = self._read()
            if found is not None and found[1].get("owner") == self.owner:
                self.fs.pipe_file(self.path, self._record())
                self._renewed = time.monotonic()
                return
            # Gone. Deleted by hand while this run held it: hold it again, unless another
            # run took it. But once this run went a lifetime without renewing (its process
            # stalled, the store was out of reach), another run may have taken it over,
            # finished and deleted it: this run's batches are no longer what the cache holds.
            if found is None and time.monotonic() - self._renewed < self.seconds:
                try:
                    create_object(self.fs, self.path, self._record())
                    self._renewed = time.monotonic()
                    return
                except FileExistsError:
                    found = self._read()
            owner = found[1].get("owner") if found is not None else None
            who = f"({owner})" if owner else "(which has since finished and removed the lease)"
            self.lost = CacheLockedError(
                f"Another run of pipeline {self.pipeline_name!r} {who} took over the cache "
                f"{self.cache} from this run: this run's lease {self.url} was last renewed "
                f"{time.monotonic() - self._renewed:.0f} s ago (it expires after {self.seconds:.0f} s; "
                "the process stalled or could not reach the store). This run stops writing to the "
                "cache so the two runs do not damage it. Run the pipeline again once the other run "
                "has finished; finished batches are reused."
            )
            logger.error("%s", self.lost)

    def check(self) -> None:
        """Raise `CacheLockedError` if another run took the lease over: call before writing.

        A lease not renewed for a lifetime (this process was stopped, or blocked) is looked
        at here and now, before the heartbeat thread gets to run again: another run may
        have taken it meanwhile, and this write must not land in the cache it now writes."""
        if self.lost is None and not self._released and time.monotonic() - self._renewed >= self.seconds:
            self.refresh()
        if self.lost is not None:
            raise CacheLockedError(str(self.lost))

    def release(self) -> None:
        """Stop renewing and delete the lease, unless another run holds it by now."""
        self._stop.set()
        if self._beat is not threading.current_thread():
            self._beat.join(timeout=30)
        with self._guard:
            if self._released:
                return
            self._released = True
            try:
                found = self._read()
                if found is None:
                    return
                if found[1].get("owner") != self.owner:
                    logger.warning(
                        "The lease %s belongs to another run now (%s); it is left in place.",
                        self.url, found[1].get("owner"),
                    )
                    return
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning(
                    "Could not delete the lease %s (%s). The next run of pipeline %r waits until "
                    "it expires (%.0f s), or delete it yourself if no run is going.",
                    self.url, exc, self.pipeline_name, self.seconds,
                )
