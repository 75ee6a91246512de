"""How failures of obstore and of the file system become :class:`StorageUnavailable`,
with messages that name the operation and the key but never a credential."""

from __future__ import annotations

import re

from backup_repository.storage.base import StorageError, StorageUnavailable

_URL_QUERY = re.compile(r"(https?://[^\s?]*)\?[^\s]*")


def first_line(exc: BaseException) -> str:
    """The first line of obstore's message, with URL query strings cut off (an Azure SAS
    token or a presigned signature would travel there)."""
    text = str(exc).strip().splitlines()
    line = _URL_QUERY.sub(r"\1?…", text[0]) if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def unavailable(action: str, key: str, exc: BaseException) -> StorageUnavailable:
    """A StorageUnavailable naming the operation, the key and obstore's first line (the
    request and status, never credentials: signatures travel in headers obstore does not
    print)."""
    if isinstance(exc, StorageError):
        return StorageUnavailable(str(exc))
    return StorageUnavailable(f"storage {action} of {key!r} failed: {first_line(exc)}")
