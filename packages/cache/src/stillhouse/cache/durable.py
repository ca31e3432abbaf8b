"""Where a step's durable folder (`Step.cache_path`) and lasting folder
(`Step.lasting_path`) are.

A step's lasting folder is one per step name and pipeline, whatever its signature:
`<cache_dir>/<pipeline>/lasting/<step>/` (for a remote cache, a local folder of the
driver's machine, see `remote_lasting_root`). A run emptied it when it starts the
step fresh by request (`use_cache=False` on the run or the step); nothing else does.

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
from typing import Any

from stillhouse.cache.atomic import disk_errors, private_dirs

DURABLE = "durable"
REMOTE_DURABLE_ENV = "STILLHOUSE_REMOTE_DURABLE_DIR"
DEFAULT_REMOTE_DURABLE_DIR = "~/.cache/stillhouse/remote-durable"


def local_durable_dir(store_dir: Path) -> Path:
    """The durable folder of the local store in `store_dir`, created if missing."""
    path = store_dir / DURABLE
    with disk_errors(path):
        private_dirs(path)
    return path


LASTING = "lasting"


def started_over(pipeline: Any, use_cache: bool) -> set[str]:
    """The steps whose lasting folder a run empties: every step with `use_cache=False`
    on the run, else those with their own `use_cache=False` (not the steps after them:
    their requests may be the same, and lasting state is keyed by content)."""
    dag = pipeline.dag
    return {name for name in dag.step_names if not use_cache or not dag.get_step(name).use_cache}


def lasting_dir(folder: Path, *, empty: bool) -> Path:
    """A step's lasting folder (`Step.lasting_path`) at `folder`, created if missing;
    `empty`: started over (the run or the step has `use_cache=False`)."""
    with disk_errors(folder):
        if empty and folder.exists():
            shutil.rmtree(folder)
        private_dirs(folder)
    return folder


def remote_lasting_root(base_url: str) -> Path:
    """Where the lasting folders of a remote cache's pipeline (`base_url`) live on this
    machine: beside its durable folders, `<remote durable dir>/lasting/<hash of the URL>/`."""
    root = Path(os.environ.get(REMOTE_DURABLE_ENV) or DEFAULT_REMOTE_DURABLE_DIR).expanduser()
    return root / LASTING / hashlib.sha256(base_url.encode()).hexdigest()[:20]


def remote_durable_dir(store_url: str, generation: str) -> Path:
    """The local durable folder of the remote store at `store_url`, created if missing."""
    root = Path(os.environ.get(REMOTE_DURABLE_ENV) or DEFAULT_REMOTE_DURABLE_DIR).expanduser()
    home = root / hashlib.sha256(store_url.encode()).hexdigest()[:20]
    if home.is_dir():
        for old in home.iterdir():  # generations this store was started over from
            if old.name != generation:
                shutil.rmtree(old, ignore_errors=True)
    path = home / generation
    with disk_errors(path):
        private_dirs(path)
    return path
