"""A loader's `storage_options`: credentials kept as secrets, plain copies handed out.

Credentials (`key`, `secret`, `token`, `password`, `client_kwargs.aws_secret_access_key`,
`headers.Authorization`, ... at any depth) are held as `SecretStr`, core's mark of a
secret inside an untyped field: `stillhouse.core.secrets` leaves them out of
`pipeline.yaml`, of the cache and of every signature, and their repr is masked in
logs and errors. Everything else (`endpoint_url`, `region_name`, ...) stays as given,
so it is saved and changes the signature.

fsspec and `datasets` get `plain_options()`: a fresh copy of the nested dicts with the
secrets revealed, which they may change as they like (`datasets` writes an `hf` entry
into the dict it is given).

Not here: which filesystem the options open (`_files.py`).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import SecretStr

_CREDENTIAL = re.compile(r"key|secret|token|passw|passphrase|credential|auth|cookie|connectionstring|sas")
"""A key naming a credential, once lowercased and stripped of `_` and `-`: `key`,
`aws_secret_access_key`, `SSECustomerKey`, `session_token`, `password`, `Authorization`,
`account_key`, `connection_string`, `sas_token`... A harmless option caught by it is only
left out of the saved file and the signature."""


def is_credential(name: Any) -> bool:
    """Whether an option of this name holds a credential (at any depth)."""
    return isinstance(name, str) and bool(_CREDENTIAL.search(re.sub(r"[_\-\s]", "", name.lower())))


def hide_credentials(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """`options` with every credential (every string under a credential's key) a `SecretStr`."""
    return None if options is None else _hide(options, secret=False)


def _hide(value: Any, *, secret: bool) -> Any:
    if isinstance(value, dict):
        return {key: _hide(item, secret=secret or is_credential(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return _rebuild(value, [_hide(item, secret=secret) for item in value])
    if secret and isinstance(value, str):
        return SecretStr(value)
    return value


def plain_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `options` (its dicts, lists and tuples new) with the secrets revealed."""
    return _reveal(options or {})


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _reveal(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return _rebuild(value, [_reveal(item) for item in value])
    return value


def merge_options(current: dict[str, Any] | None, given: dict[str, Any]) -> dict[str, Any]:
    """`given` laid over `current`, nested dicts merged key by key (a key given wins)."""
    merged = dict(current or {})
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = value
    return merged


def _rebuild(original: list[Any] | tuple[Any, ...], items: list[Any]) -> Any:
    if isinstance(original, list):
        return items
    if hasattr(original, "_fields"):  # a named tuple (aiohttp's BasicAuth)
        return type(original)(*items)
    return tuple(items)


def without_secrets(text: str, options: dict[str, Any] | None) -> str:
    """`text` (an error's message) with every credential of `options` masked, should the
    filesystem have quoted one. One of fewer than 4 characters is no secret worth
    garbling the message for."""
    for secret in sorted(_secrets(options or {}), key=len, reverse=True):
        text = text.replace(secret, "**********")
    return text


def _secrets(value: Any) -> list[str]:
    if isinstance(value, SecretStr):
        revealed = value.get_secret_value()
        return [revealed] if len(revealed) >= 4 else []
    if isinstance(value, dict):
        return [secret for item in value.values() for secret in _secrets(item)]
    if isinstance(value, list | tuple):
        return [secret for item in value for secret in _secrets(item)]
    return []
