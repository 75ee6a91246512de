"""Which object keys and prefixes the stores accept.

A key names a file under a file:// root as well as an object in a bucket, so the rules
are those that keep a key inside the root and apart from the staging files of writes in
progress (``<name>#<n>``, see :mod:`backup_repository.storage.local`).
"""

from __future__ import annotations

import re
from typing import Final

MAX_KEY_BYTES: Final = 1024

STAGING_NAME: Final = re.compile(r"#[0-9]+\Z")
"""obstore's LocalStore writes ``<name>`` through a staging file ``<name>#<n>`` (n = 1, 2,
... whichever is free) and renames it over the target when the write completes; the
file:// write path uses the same names."""


def validate_key(key: str) -> None:
    """Refuse keys that could escape the store's root or collide with staging names:
    empty, leading or trailing ``/``, empty, ``.`` or ``..`` segments, backslashes, control
    characters, a segment ending in ``#<digits>``, more than 1024 bytes. Raises ValueError."""
    if not isinstance(key, str) or not key:
        raise ValueError("storage key must be a non-empty string")
    _validate_path(key, what="key")
    if key.endswith("/"):
        raise ValueError(f"storage key must not end with '/': {key!r}")


def validate_prefix(prefix: str) -> None:
    """Like :func:`validate_key`, but ``""`` (everything) and a trailing ``/`` are allowed."""
    if not isinstance(prefix, str):
        raise ValueError("storage prefix must be a string")
    if prefix:
        _validate_path(prefix[:-1] if prefix.endswith("/") else prefix, what="prefix")


def _validate_path(path: str, *, what: str) -> None:
    if path.startswith("/"):
        raise ValueError(f"storage {what} must not start with '/': {path!r}")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"storage {what} is longer than {MAX_KEY_BYTES} bytes")
    if "\\" in path or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ValueError(f"storage {what} must not contain backslashes or control characters")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"storage {what} must not contain empty, '.' or '..' segments")
        if STAGING_NAME.search(segment):
            raise ValueError(f"storage {what} segments must not end with '#<digits>': {path!r}")
