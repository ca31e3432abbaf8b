"""Files behind a loader: which ones a path or glob names, and a fingerprint of them.

The fingerprint goes into the loader's cache signature: a file written, added or
removed since the last run makes the loader read again. Per file it holds the size
and every change stamp the filesystem reports, together (one alone can be reset):

- a local file: mtime, ctime and inode, in nanoseconds. `os.utime`, `cp -p`,
  `rsync -t` and `tar x` put an old mtime back, but the kernel sets the ctime of
  every write and every utime to the current time; a file replaced by another
  (`mv`, an atomic save) has a new inode. What stays unseen is a rewrite of the same
  size within the filesystem's timestamp tick of the previous write (a few ms).
- a remote file: whichever of ETag, md5, crc32c, generation, version id, blob id,
  LFS sha256, Xet hash, mtime, last-modified and creation time it reports (S3, GCS,
  Azure, `hf://`).
- a file with none of these: the sha256 of its content, read in full (a size alone
  would miss a same-size rewrite).

Listings are read fresh: the filesystem's listings cache (s3fs, `hf://`) is cleared
first, so a file added or rewritten since the last listing in this process counts. A
run's preparation lists and fingerprints a path once (validation and the signature
share the answer: `stillhouse.core.lookups`); every run looks again.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from stillhouse.core.lookups import lookup_once
from stillhouse.steps._options import plain_options

_STAMPS = (
    "ETag", "etag", "md5", "md5Hash", "crc32c", "generation", "VersionId", "blob_id",
    "lfs.sha256", "xet_hash", "mtime", "LastModified", "last_modified", "updated", "created",
)
"""Keys of `fs.info()` that change when a file's content does (dotted: a nested key)."""

_HASH_CHUNK = 1 << 20


def open_fs(path: str | os.PathLike[str], storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem of `path` (local path or URL), with its listings cache
    cleared, and the path inside it."""
    import fsspec  # here, not at the top: every run loads this plugin, few read files

    fs, inner = fsspec.core.url_to_fs(os.fspath(path), **plain_options(storage_options))
    fs.invalidate_cache()
    return fs, inner


def list_files(fs: Any, root: str) -> list[str]:
    """Files a glob matches, every file under a folder, or the file itself (sorted).
    Listed once per run's preparation (`stillhouse.core.lookups`)."""
    return list(lookup_once(("files", fs, root), lambda: _list_files(fs, root)))


def _list_files(fs: Any, root: str) -> list[str]:
    import fsspec

    if fsspec.core.has_magic(root):
        files = [p for p in fs.glob(root) if fs.isfile(p)]
    elif fs.isdir(root):
        files = fs.find(root)
    elif fs.exists(root):
        files = [root]
    else:
        files = []
    return sorted(p for p in files if not _hidden_beyond(root, p))


def _hidden(path: str) -> int:
    return sum(1 for part in path.split("/") if part.startswith(".") and set(part) != {"."})


def _hidden_beyond(root: str, path: str) -> bool:
    """Whether `path`, found under the folder or glob `root`, is hidden where `root` did
    not ask for it (a `.gitkeep`, Spark's `.part-0.crc`, `.ipynb_checkpoints/`): such files
    are not data, and `datasets` skips them too. A path or glob that names a hidden part
    (`data/.cache/*.jsonl`) gets it."""
    return _hidden(path) > _hidden(root)


def fingerprint(fs: Any, files: list[str]) -> list[list[Any]]:
    """`[path, size, {stamp: value}]` per file; a changed file changes its entry. Taken
    once per run's preparation (`stillhouse.core.lookups`)."""
    return lookup_once(("fingerprint", fs, tuple(files)), lambda: _fingerprint(fs, files))


def _fingerprint(fs: Any, files: list[str]) -> list[list[Any]]:
    entries = []
    for path in files:
        info = fs.info(path)
        entries.append([path, info.get("size"), _stamps(fs, path, info)])
    return entries


def _stamps(fs: Any, path: str, info: dict[str, Any]) -> dict[str, str]:
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        stat = os.stat(path)
        return {"mtime_ns": str(stat.st_mtime_ns), "ctime_ns": str(stat.st_ctime_ns),
                "ino": str(stat.st_ino)}
    stamps = {}
    for key in _STAMPS:
        value: Any = info
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        if value is not None:
            stamps[key] = str(value)
    return stamps or {"sha256": _content_hash(fs, path)}


def _content_hash(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(files: list[str], shown: int = 3) -> str:
    """`['a.jsonl', 'b.jsonl']`, or the first `shown` and how many more, for a message."""
    listed = repr(files[:shown])
    return listed if len(files) <= shown else f"{listed[:-1]}, ... ({len(files) - shown} more)]"
