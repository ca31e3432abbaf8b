"""Where a step's durable folder (`Step.cache_path`) is.

A local store keeps it inside the step's store folder (`steps/<step>-<sig>/durable/`),
so it goes wherever the store goes: kept across stops, kills and resumes, removed
when the store is started over or deleted, and a new signature names a new store.

A remote store (`cache_dir="s3://..."`) cannot hold it: workers write the folder
with plain file I/O. It is a local folder of the driver's machine instead,
`$STILLHOUSE_REMOTE_DURABLE_DIR` (default `~/.cache/stillhouse/remote-durable`)
`/<hash of the store's URL>/<store generation>/`: a store started over has a new
generation, so an empty folder, and the old generation's folder is deleted. It
survives stops, kills and resumes on this machine; a resume on another machine
starts with an empty folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

DURABLE = "durable"
REMOTE_DURABLE_ENV = "STILLHOUSE_REMOTE_DURABLE_DIR"
DEFAULT_REMOTE_DURABLE_DIR = "~/.cache/stillhouse/remote-durable"


def local_durable_dir(store_dir: Path) -> Path:
    """The durable folder of the local store in `store_dir`, created if missing."""
    path = store_dir / DURABLE
    path.mkdir(parents=True, exist_ok=True)
    return path


def remote_durable_dir(store_url: str, generation: str) -> Path:
    """The local durable folder of the remote store at `store_url`, created if missing."""
    root = Path(os.environ.get(REMOTE_DURABLE_ENV) or DEFAULT_REMOTE_DURABLE_DIR).expanduser()
    home = root / hashlib.sha256(store_url.encode()).hexdigest()[:20]
    if home.is_dir():
        for old in home.iterdir():  # generations this store was started over from
            if old.name != generation:
                shutil.rmtree(old, ignore_errors=True)
    path = home / generation
    path.mkdir(parents=True, exist_ok=True)
    return path
