"""Pushing a Distiset to the Hugging Face Hub.

Each leaf goes up with `datasets.DatasetDict.push_to_hub` as its own configuration
(Parquet shards plus the `configs` entry of the README's YAML header). Then one
more commit adds the dataset card, `pipeline.yaml` with the inline-data files it
refers to, `pipeline.log`, the script and the artifacts. The token is handed to
`huggingface_hub` and never logged.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import EntryNotFoundError

from stillhouse.core.errors import HubConnectionError
from stillhouse.distiset._storage import read_bytes
from stillhouse.distiset.card import render_card
from stillhouse.distiset.pipeline_files import inline_files

if TYPE_CHECKING:
    from stillhouse.distiset.distiset import Distiset

logger = logging.getLogger("stillhouse.distiset")

README = "README.md"


def push_distiset(
    distiset: Distiset,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    generate_card: bool = True,
    include_script: bool = False,
    **kwargs: Any,
) -> None:
    """Implementation of `Distiset.push_to_hub` (see there)."""
    if not distiset:
        raise ValueError(f"Nothing to push to {repo_id!r}: the Distiset has no configuration.")
    api = HfApi(token=token)
    try:
        _push(distiset, api, repo_id, private=private, token=token, generate_card=generate_card,
              include_script=include_script, **kwargs)
    except Exception as exc:
        network = _network_error(exc)
        if network is None:
            raise
        first = (str(network).strip().splitlines() or [""])[0]
        error = HubConnectionError(
            f"Could not reach the Hugging Face Hub at {api.endpoint} to push {repo_id!r} "
            f"({type(network).__name__}: {first}). Check the network connection, a proxy "
            "(HTTPS_PROXY), HF_ENDPOINT if you set it, and that HF_HUB_OFFLINE is not 1; "
            "the results stay in the run's cache, so pushing again later needs no rerun."
        )
        error.original = exc  # the transport's own error, without its 40 frames in the report
        raise error from None


_NETWORK_ERRORS = {"ConnectionError", "TransportError", "NetworkError", "TimeoutException",
                   "ConnectError", "ConnectTimeout", "OfflineModeIsEnabled"}


def _network_error(exc: BaseException) -> BaseException | None:
    """The first error in `exc`'s chain that says the endpoint was not reached, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError) or any(
            cls.__name__ in _NETWORK_ERRORS for cls in type(seen).__mro__
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _push(
    distiset: Distiset,
    api: HfApi,
    repo_id: str,
    *,
    private: bool,
    token: str | None,
    generate_card: bool,
    include_script: bool,
    **kwargs: Any,
) -> None:
    for name, splits in distiset.items():
        rows = sum(distiset.row_counts()[name].values())
        logger.info(
            "Pushing configuration %r (%d rows) to the Hub dataset %r.", name, rows, repo_id
        )
        commit = splits.push_to_hub(
            repo_id, config_name=name, private=private, token=token, **kwargs
        )
        if commit is not None:  # a bare "name" became "<user>/name": use what the Hub says
            repo_id = commit.repo_url.repo_id

    operations: list[CommitOperationAdd] = []
    script = Path(sys.argv[0]) if include_script and sys.argv and sys.argv[0] else None
    if script is not None and not script.is_file():
        logger.warning(
            "include_script=True but %r is not a file: the script is not uploaded.", str(script)
        )
        script = None
    if script is not None:
        operations.append(CommitOperationAdd(path_in_repo=script.name, path_or_fileobj=str(script)))

    pipeline_yaml = None
    if distiset.pipeline_path is not None:
        pipeline_yaml = read_bytes(distiset.pipeline_path, distiset.storage_options)
        operations.append(
            CommitOperationAdd(path_in_repo="pipeline.yaml", path_or_fileobj=pipeline_yaml)
        )
        # The inline rows it refers to, at the same paths: the card's reproduce command
        # loads them from beside the pipeline file.
        for relative, location in inline_files(
            distiset.pipeline_path, pipeline_yaml, distiset.storage_options
        ):
            operations.append(
                CommitOperationAdd(
                    path_in_repo=relative, path_or_fileobj=_content(distiset, location)
                )
            )
    if distiset.log_filename_path is not None:
        log = _content(distiset, distiset.log_filename_path)
        operations.append(CommitOperationAdd(path_in_repo="pipeline.log", path_or_fileobj=log))
    for relative, location in distiset.artifact_files():
        content = _content(distiset, location)
        operations.append(
            CommitOperationAdd(path_in_repo=f"artifacts/{relative}", path_or_fileobj=content)
        )

    if generate_card:
        readme = render_card(
            distiset,
            repo_id,
            pipeline_yaml=pipeline_yaml.decode("utf-8", "replace") if pipeline_yaml else None,
            hub_url=api.endpoint,
            existing_readme=_current_readme(api, repo_id),
            script_name=script.name if script is not None else None,
        )
        operations.append(CommitOperationAdd(path_in_repo=README, path_or_fileobj=readme.encode()))

    if operations:
        logger.info("Adding %s to %r.", ", ".join(op.path_in_repo for op in operations), repo_id)
        api.create_commit(
            repo_id,
            operations=operations,
            commit_message="Add the stillhouse dataset card and pipeline files",
            repo_type="dataset",
        )


def _content(distiset: Distiset, location: Path | str) -> str | bytes:
    """A local file by path (huggingface_hub streams it), a remote one read into memory."""
    text = os.fspath(location)
    return read_bytes(text, distiset.storage_options) if "://" in text else text


def _current_readme(api: HfApi, repo_id: str) -> str | None:
    """The README `datasets` just pushed: its YAML header lists the configurations."""
    try:
        path = api.hf_hub_download(repo_id, README, repo_type="dataset")
    except EntryNotFoundError:
        return None
    return Path(path).read_text(encoding="utf-8")
