"""Fixtures of the stillhouse-distiset tests: an isolated datasets cache, no network,
and `fake_hub`, a small in-memory Hugging Face Hub served over local HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import datasets
import pytest
import yaml

from tests.support.local_servers import http_server, point_hub_clients_at

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Keep the unified Arrow files out of the user's cache and refuse any network."""
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-datasets")
    )
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in _LOOPBACK:
            raise OSError(f"Tests must not use the network (tried {address!r}).")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


# -- a fake Hub ----------------------------------------------------------------------


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)
    sha: str = "0" * 40
    private: bool = False


@dataclass
class FakeHub:
    """What the server saw and holds: repositories, LFS objects, requests, commits."""

    url: str = ""
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    """(method, path, headers with lower-case names) of every request."""
    commits: list[dict[str, Any]] = field(default_factory=list)
    unhandled: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


_REPO = r"(?P<repo>[^/]+/[^/]+?)"
_ROUTES = [
    ("GET", rf"^/api/datasets/{_REPO}(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
    ("POST", r"^/api/repos/create$", "create_repo"),
    ("POST", rf"^/api/datasets/{_REPO}/preupload/(?P<rev>[^/]+)$", "preupload"),
    ("POST", rf"^/datasets/{_REPO}\.git/info/lfs/objects/batch$", "lfs_batch"),
    ("PUT", r"^/lfs-upload/(?P<oid>[0-9a-f]+)$", "lfs_upload"),
    ("POST", rf"^/api/datasets/{_REPO}/commit/(?P<rev>[^/]+)$", "commit"),
    ("GET", rf"^/api/datasets/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),
    ("POST", rf"^/api/datasets/{_REPO}/paths-info/(?P<rev>[^/]+)$", "paths_info"),
    ("GET", rf"^/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ("HEAD", rf"^/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    # The links of the dataset card (`.../raw/main/pipeline.yaml`), as huggingface.co serves them.
    ("GET", rf"^/datasets/{_REPO}/raw/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ("HEAD", rf"^/datasets/{_REPO}/raw/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ("GET", r"^/api/whoami-v2$", "whoami"),
    ("POST", r"^/api/validate-yaml$", "validate_yaml"),
]


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        self.query = parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        with self.hub.lock:
            self.hub.requests.append(
                (self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            )
            for method, pattern, name in _ROUTES:
                match = re.match(pattern, parts.path)
                if method == self.command and match:
                    groups = {k: unquote(v) if v else v for k, v in match.groupdict().items()}
                    return getattr(self, name)(**groups)
            self.hub.unhandled.append(f"{self.command} {self.path}")
            self._send(404, {"error": "not handled by the fake hub"})

    do_GET = do_POST = do_PUT = do_HEAD = _dispatch

    def _send(
        self,
        status: int,
        payload: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
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

    def _repo(self, repo: str) -> Repo | None:
        found = self.hub.repos.get(repo)
        if found is None:
            self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return found

    def _authorized(self) -> bool:
        if not (self.headers.get("Authorization") or "").startswith("Bearer "):
            self._send(401, {"error": "Invalid credentials"})
            return False
        return True

    # -- endpoints ------------------------------------------------------------------

    def whoami(self) -> None:
        self._send(200, {"type": "user", "name": "tester", "orgs": [], "auth": {}})

    def validate_yaml(self) -> None:
        content = json.loads(self.body)["content"]
        match = re.match(r"^---\n(.*?)\n---", content, re.S)
        try:
            yaml.safe_load(match[1] if match else "")
        except yaml.YAMLError as exc:
            return self._send(400, raw=str(exc).encode())
        self._send(200, {})

    def repo_info(self, repo: str, rev: str | None = None) -> None:
        if (found := self._repo(repo)) is not None:
            self._send(
                200,
                {
                    "id": repo,
                    "author": repo.split("/")[0],
                    "sha": found.sha,
                    "private": found.private,
                    "siblings": [{"rfilename": p} for p in sorted(found.files)],
                },
            )

    def create_repo(self) -> None:
        if not self._authorized():
            return
        data = json.loads(self.body)
        repo = f"{data.get('organization') or 'tester'}/{data['name']}"
        self.hub.repos.setdefault(repo, Repo(private=data.get("visibility") == "private"))
        self._send(200, {"url": f"{self.hub.url}/datasets/{repo}", "name": repo})

    def preupload(self, repo: str, rev: str) -> None:
        if self._authorized() and self._repo(repo) is not None:
            files = json.loads(self.body)["files"]
            self._send(
                200,
                {
                    "files": [
                        {
                            "path": f["path"],
                            "uploadMode": "lfs" if f["path"].endswith(".parquet") else "regular",
                            "shouldIgnore": False,
                        }
                        for f in files
                    ]
                },
            )

    def lfs_batch(self, repo: str) -> None:
        if not self._authorized():
            return
        objects = json.loads(self.body)["objects"]
        self._send(
            200,
            {
                "transfer": "basic",
                "objects": [
                    {
                        "oid": o["oid"],
                        "size": o["size"],
                        "authenticated": True,
                        "actions": {"upload": {"href": f"{self.hub.url}/lfs-upload/{o['oid']}"}},
                    }
                    for o in objects
                ],
            },
        )

    def lfs_upload(self, oid: str) -> None:
        if hashlib.sha256(self.body).hexdigest() != oid:
            return self._send(400, {"error": "sha256 mismatch"})
        self.hub.lfs_objects[oid] = self.body
        self._send(200, {})

    def commit(self, repo: str, rev: str) -> None:
        if not self._authorized() or (found := self._repo(repo)) is None:
            return
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        if header.get("parentCommit") and header["parentCommit"] != found.sha:
            return self._send(412, {"error": "parent commit is not the head"})
        touched = []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                found.files[value["path"]] = base64.b64decode(value["content"])
                found.lfs.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.hub.lfs_objects:
                    return self._send(
                        400, {"error": f"LFS object of {value['path']} was never uploaded"}
                    )
                found.files[value["path"]] = self.hub.lfs_objects[value["oid"]]
                found.lfs.add(value["path"])
            elif key == "deletedFile":
                found.files.pop(value["path"], None)
            elif key != "header":
                return self._send(400, {"error": f"unsupported commit operation {key!r}"})
            if key != "header":
                touched.append(value["path"])
        found.sha = hashlib.sha1((found.sha + json.dumps(touched)).encode()).hexdigest()
        self.hub.commits.append({"repo": repo, "summary": header.get("summary"), "paths": touched})
        self._send(
            200,
            {
                "commitUrl": f"{self.hub.url}/datasets/{repo}/commit/{found.sha}",
                "commitOid": found.sha,
                "success": True,
            },
        )

    def _entry(self, repo: Repo, path: str) -> dict[str, Any]:
        if path in repo.files:
            content = repo.files[path]
            entry = {
                "type": "file",
                "path": path,
                "size": len(content),
                "oid": hashlib.sha1(content).hexdigest(),
            }
            if path in repo.lfs:
                entry["lfs"] = {
                    "oid": hashlib.sha256(content).hexdigest(),
                    "size": len(content),
                    "pointerSize": 130,
                }
            return entry
        return {"type": "directory", "path": path, "oid": "0" * 40}

    def tree(self, repo: str, rev: str, path: str | None = None) -> None:
        if (found := self._repo(repo)) is None:
            return
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = self.query.get("recursive", ["False"])[0].lower() == "true"
        names: set[str] = set()
        for file in found.files:
            if not file.startswith(prefix):
                continue
            parts = file[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            names.update(prefix + "/".join(parts[: i + 1]) for i in range(min(depth, len(parts))))
        if path and not names:
            return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        self._send(200, [self._entry(found, name) for name in sorted(names)])

    def paths_info(self, repo: str, rev: str) -> None:
        if (found := self._repo(repo)) is None:
            return
        paths = parse_qs(self.body.decode()).get("paths", [])
        dirs = {"/".join(f.split("/")[:i]) for f in found.files for i in range(1, f.count("/") + 1)}
        self._send(200, [self._entry(found, p) for p in paths if p in found.files or p in dirs])

    def resolve(self, repo: str, rev: str, path: str) -> None:
        if (found := self._repo(repo)) is None:
            return
        if path not in found.files:
            return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        content = found.files[path]
        headers = {
            "X-Repo-Commit": found.sha,
            "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
            "Accept-Ranges": "bytes",
        }
        status = 200
        if match := re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or ""):
            start = int(match[1])
            end = int(match[2]) if match[2] else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start : end + 1], 206
        self._send(status, headers=headers, raw=content)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A fake Hub on 127.0.0.1 that `huggingface_hub` and `datasets` talk to."""
    hub = FakeHub()
    with http_server(type("Handler", (_Handler,), {"hub": hub})) as url:
        hub.url = url
        point_hub_clients_at(url, monkeypatch, tmp_path)
        yield hub
