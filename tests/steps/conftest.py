"""Fixtures of the stillhouse-steps tests: no network, an isolated `datasets` cache,
`hub` (a read-only Hugging Face Hub on 127.0.0.1 that `huggingface_hub` and
`datasets` download from) and `s3` (a moto S3 server; `s3_as_users_have_it`: the
same with s3fs's default settings).

Only stillhouse-core and stillhouse-steps (plus the test tools) need be installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import datasets
import pytest

from tests.support.local_servers import http_server, moto_s3, point_hub_clients_at

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Keep `datasets`' files out of the user's cache and refuse any network."""
    cache = tmp_path_factory.mktemp("hf-datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in _LOOPBACK:
            raise OSError(f"Tests must not use the network (tried {address!r}).")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


# -- a read-only Hub ------------------------------------------------------------------


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = "0" * 40


@dataclass
class Hub:
    """Dataset repositories served the way the Hub serves them; `publish` makes a commit."""

    url: str = ""
    repos: dict[str, Repo] = field(default_factory=dict)
    commits: dict[tuple[str, str], Repo] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    unhandled: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    after_branch_info: Callable[[str], None] | None = None
    """Called (under `lock`) after answering which commit a branch is at, with the repo."""

    def publish(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Replace the repository's files in a new commit; returns its sha."""
        with self.lock:
            return self.commit(repo_id, files)

    def commit(self, repo_id: str, files: dict[str, bytes]) -> str:
        """`publish`, for a caller holding `lock`. Earlier commits stay readable by sha."""
        sha = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        self.repos[repo_id] = self.commits[(repo_id, sha)] = Repo(files=dict(files), sha=sha)
        return sha


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


_REPO = r"(?P<repo>[^/]+/[^/]+?)"
_ROUTES = [
    ("GET", rf"^/api/datasets/{_REPO}(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
    ("GET", rf"^/api/datasets/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),
    ("POST", rf"^/api/datasets/{_REPO}/paths-info/(?P<rev>[^/]+)$", "paths_info"),
    ("GET", rf"^/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ("HEAD", rf"^/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    hub: Hub

    def log_message(self, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        self.query = parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        with self.hub.lock:
            self.hub.requests.append(f"{self.command} {self.path}")
            for method, pattern, name in _ROUTES:
                match = re.match(pattern, parts.path)
                if method == self.command and match:
                    groups = {k: unquote(v) if v else v for k, v in match.groupdict().items()}
                    return getattr(self, name)(**groups)
            self.hub.unhandled.append(f"{self.command} {self.path}")
            self._send(404, {"error": "not handled by the test hub"})

    do_GET = do_POST = do_HEAD = _dispatch

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None,
              raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _repo(self, repo: str, rev: str | None = None) -> Repo | None:
        found = self.hub.repos.get(repo)
        if found is None:
            self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        if rev not in (None, "main", found.sha):
            found = self.hub.commits.get((repo, rev))
        if found is None:
            self._send(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
        return found

    def _entry(self, repo: Repo, path: str) -> dict[str, Any]:
        if path in repo.files:
            content = repo.files[path]
            return {"type": "file", "path": path, "size": len(content),
                    "oid": hashlib.sha1(content).hexdigest()}
        return {"type": "directory", "path": path, "oid": "0" * 40}

    def repo_info(self, repo: str, rev: str | None = None) -> None:
        if (found := self._repo(repo, rev)) is not None:
            self._send(200, {"id": repo, "author": repo.split("/")[0], "sha": found.sha,
                             "private": False, "cardData": {},
                             "siblings": [{"rfilename": p} for p in sorted(found.files)]})
            if rev in (None, "main") and self.hub.after_branch_info is not None:
                self.hub.after_branch_info(repo)

    def tree(self, repo: str, rev: str, path: str | None = None) -> None:
        if (found := self._repo(repo, rev)) is None:
            return
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = self.query.get("recursive", ["False"])[0].lower() == "true"
        names: set[str] = set()
        for file in found.files:
            if not file.startswith(prefix):
                continue
            parts = file[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            names.update(prefix + "/".join(parts[: i + 1]) for i in range(min(depth, len(parts))))
        if path and not names:
            return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        self._send(200, [self._entry(found, name) for name in sorted(names)])

    def paths_info(self, repo: str, rev: str) -> None:
        if (found := self._repo(repo, rev)) is None:
            return
        paths = parse_qs(self.body.decode()).get("paths", [])
        dirs = {"/".join(f.split("/")[:i]) for f in found.files for i in range(1, f.count("/") + 1)}
        self._send(200, [self._entry(found, p) for p in paths if p in found.files or p in dirs])

    def resolve(self, repo: str, rev: str, path: str) -> None:
        if (found := self._repo(repo, rev)) is None:
            return
        if path not in found.files:
            return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        content = found.files[path]
        headers = {"X-Repo-Commit": found.sha, "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                   "Accept-Ranges": "bytes"}
        status = 200
        if match := re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or ""):
            start = int(match[1])
            end = int(match[2]) if match[2] else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start: end + 1], 206
        self._send(status, headers=headers, raw=content)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A Hub on 127.0.0.1; `HF_ENDPOINT` (for worker processes) and the libraries'
    import-time constants (for this one) point at it."""
    state = Hub()
    with http_server(type("Handler", (_Handler,), {"hub": state})) as url:
        state.url = url
        point_hub_clients_at(url, monkeypatch, tmp_path)
        yield state


# -- S3 -------------------------------------------------------------------------------


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 with a bucket `stillhouse-steps`; s3fs points at it."""
    with moto_s3(monkeypatch, "stillhouse-steps") as (_, fs):
        yield fs


@pytest.fixture
def s3_as_users_have_it(monkeypatch):
    """The `s3` server, with s3fs as users have it: the endpoint only in a step's
    `storage_options` (not in fsspec's configuration) and the listings cache on.

    Yields `(storage_options, fs)`; `fs` (listings cache off) writes the test's files."""
    import fsspec

    with moto_s3(monkeypatch, "stillhouse-steps") as (endpoint, fs):
        configured = fsspec.config.conf.pop("s3", None)
        try:
            yield {"client_kwargs": {"endpoint_url": endpoint}}, fs
        finally:
            if configured is not None:  # moto_s3 restores what was there before it
                fsspec.config.conf["s3"] = configured
