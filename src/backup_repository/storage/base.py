"""The storage interface services depend on. Two implementations: ``filesystem.py`` for
file:// URLs (the standard library alone) and ``objectstore.py`` for s3://, gs://,
azblob:// and memory:// URLs (obstore); ``factory.py`` opens the one a URL names."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol


class StorageError(Exception):
    """A storage operation failed."""


class BlobNotFound(StorageError):
    """The object does not exist."""


class StorageUnavailable(StorageError):
    """The storage cannot be reached or refuses to work (down, full, no permission)."""


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    last_modified: datetime | None = None
    etag: str | None = None


class BlobStore(Protocol):
    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        observe: Callable[[bytes], object] | None = None,
    ) -> int:
        """Write ``chunks`` to ``key`` atomically and return the number of bytes written.

        ``observe``, when given, is called with every chunk, in order, off the event loop
        (file://: in the thread that writes the chunk, just before it is written) and has
        seen them all when the call returns; e.g. a hash's ``update``, so that hashing
        costs no thread and no hand-over of its own. When it raises, the write fails with
        its exception as when ``chunks`` raises.

        While the write is in progress the data lives under a temporary name (a staging
        file, or an unfinished multipart upload); the object appears under ``key`` only
        when ``chunks`` is exhausted without error. If ``chunks`` raises (a quota or format
        check failed, the client went away) or the storage fails, the exception propagates
        and nothing is left under ``key`` or any temporary name.
        """

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of the object (``end=None``: to the end), in
        bounded chunks. Raises BlobNotFound."""

    async def stat(self, key: str) -> BlobInfo | None:
        """Size and metadata of the object, or None when it does not exist."""

    async def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""

    def list(self, prefix: str) -> AsyncIterator[BlobInfo]:
        """Objects whose key starts with ``prefix``."""

    async def probe(self) -> None:
        """Write, read back and delete a small object; raise StorageUnavailable on failure."""

    def local_path(self, key: str) -> Path | None:
        """The object's file on a local disk (file:// storage only) so that downloads can be
        sent zero-copy; None for remote storage."""

    async def remove_incomplete_writes(self, prefix: str) -> int:
        """Delete what interrupted writes (a crash mid-upload) left under ``prefix``
        (staging files; unfinished multipart uploads where the backend can list them) and
        return how many were removed. Only call it when no write under ``prefix`` can be
        in progress."""

    async def remove_leftovers(self, prefix: str, keys: Sequence[str]) -> int:
        """What :meth:`remove_incomplete_writes` removes under ``prefix``, and the objects
        ``keys`` (a missing one is not an error), in one call: the clean-up of a
        collection under its upload lock. Returns how many incomplete writes were
        removed. Only call it when no write under ``prefix`` can be in progress."""

    async def close(self) -> None: ...
