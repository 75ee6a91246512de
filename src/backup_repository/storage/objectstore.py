"""The BlobStore on obstore (Rust object_store): s3://, gs://, azblob://, memory://.
(file:// storage has a store of its own, :mod:`~backup_repository.storage.filesystem`.)

The store is put together from the modules of this package: the key rules
(:mod:`~backup_repository.storage.keys`), the multipart upload
(:mod:`~backup_repository.storage.remote`), and its construction from a URL
(:mod:`~backup_repository.storage.factory`). How the Protocol's promises are kept:

- Atomic writes: the object appears only when a multipart upload is completed. When the
  caller's iterator raises, the upload is aborted and the caller's exception propagates
  unchanged; a cancelled write is aborted the same way.
- Bounded memory: at most ``upload_concurrency`` parts are in flight plus the one being
  filled; reads stream in chunks of about ``READ_CHUNK_SIZE``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import NotFoundError as ObstoreNotFound

from backup_repository.storage.base import BlobInfo, BlobNotFound, StorageUnavailable
from backup_repository.storage.defaults import (
    DEFAULT_PART_SIZE,
    DEFAULT_PROBE_TIMEOUT,
    DEFAULT_UPLOAD_CONCURRENCY,
    PROBE_PREFIX,
    READ_CHUNK_SIZE,
    check_write_settings,
)
from backup_repository.storage.errors import unavailable
from backup_repository.storage.keys import validate_key, validate_prefix
from backup_repository.storage.remote import put_multipart
from backup_repository.storage.urls import StorageLocation

if TYPE_CHECKING:
    from obstore import GetOptions, ObjectMeta
    from obstore.store import ObjectStore

ABORT_TIMEOUT: Final = 30.0
"""How long a cancelled ``put_stream`` waits for the upload to be aborted in storage."""


class ObstoreBlobStore:
    """:class:`~backup_repository.storage.base.BlobStore` on one obstore store."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        location: StorageLocation,
        description: str,
        read_store: ObjectStore | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        abort_timeout: float = ABORT_TIMEOUT,
    ) -> None:
        check_write_settings(part_size, upload_concurrency)
        self._store = store
        self._read_store = read_store if read_store is not None else store
        self._location = location
        self._description = description
        self._part_size = part_size
        self._upload_concurrency = upload_concurrency
        self._probe_timeout = probe_timeout
        self._probe_key = f"{PROBE_PREFIX}{secrets.token_hex(16)}"
        self._probe_lock = asyncio.Lock()
        self._abort_timeout = abort_timeout

    def __repr__(self) -> str:
        return f"ObstoreBlobStore({self._description})"

    @property
    def location(self) -> StorageLocation:
        return self._location

    @property
    def part_size(self) -> int:
        return self._part_size

    # -- writes ------------------------------------------------------------------------------

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        observe: Callable[[bytes], object] | None = None,
    ) -> int:
        validate_key(key)
        return await put_multipart(
            self._store,
            key,
            chunks,
            part_size=self._part_size,
            concurrency=self._upload_concurrency,
            abort_timeout=self._abort_timeout,
            observe=observe,
        )

    async def delete(self, key: str) -> None:
        validate_key(key)
        try:
            await obstore.delete_async(self._store, key)
        except (FileNotFoundError, ObstoreNotFound):
            return
        except (ObstoreError, OSError) as exc:
            raise unavailable("delete", key, exc) from exc

    # -- reads -------------------------------------------------------------------------------

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)``. A range reaching past the end of the object is cut at
        the end; a range starting at or after the end (or ``start == end``) yields nothing.
        Raises BlobNotFound when the object does not exist, ValueError for ``start < 0`` or
        ``end < start``."""
        validate_key(key)
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range [{start}, {end})")
        if end is not None and end == start:
            if await self.stat(key) is None:
                raise BlobNotFound(key)
            return
        options: GetOptions | None = None
        if end is not None:
            options = {"range": (start, end)}
        elif start > 0:
            options = {"range": {"offset": start}}
        try:
            result = await obstore.get_async(self._read_store, key, options=options)
        except (FileNotFoundError, ObstoreNotFound):
            raise BlobNotFound(key) from None
        except (ObstoreError, OSError) as exc:
            if options is None:
                raise unavailable("read", key, exc) from exc
            # An unsatisfiable range (at or past the end) is an error to S3; tell it apart
            # from a real failure by the object's size.
            info = await self.stat(key)
            if info is None:
                raise BlobNotFound(key) from None
            if start >= info.size:
                return
            raise unavailable("read", key, exc) from exc
        try:
            async for chunk in result.stream(min_chunk_size=READ_CHUNK_SIZE):
                for piece in _pieces(chunk):
                    yield piece
        except (FileNotFoundError, ObstoreNotFound):
            raise BlobNotFound(key) from None
        except (ObstoreError, OSError) as exc:
            raise unavailable("read", key, exc) from exc

    async def stat(self, key: str) -> BlobInfo | None:
        validate_key(key)
        try:
            meta = await obstore.head_async(self._store, key)
        except (FileNotFoundError, ObstoreNotFound):
            return None
        except (ObstoreError, OSError) as exc:
            raise unavailable("stat", key, exc) from exc
        return _info(meta)

    async def list(self, prefix: str) -> AsyncIterator[BlobInfo]:
        """Objects whose key starts with ``prefix`` (plain string prefix: ``a/b`` matches
        ``a/b/c`` and ``a/bc``), in no particular order. In-progress writes are not listed."""
        validate_prefix(prefix)
        # obstore lists whole path segments; list the folder the prefix is in and filter.
        folder = prefix.rpartition("/")[0]
        try:
            stream = obstore.list(self._store, folder or None, chunk_size=1000)
            async for batch in stream:
                for meta in batch:
                    if meta["path"].startswith(prefix):
                        yield _info(meta)
        except (FileNotFoundError, ObstoreNotFound):
            return
        except (ObstoreError, OSError) as exc:
            raise unavailable("list", prefix or "/", exc) from exc

    # -- operations --------------------------------------------------------------------------

    async def probe(self) -> None:
        # One key per store instance, probes one at a time: a probe cut off by a timeout
        # may still land its write later, and the next successful probe removes it, so
        # hung storage leaves at most one object under .health/ per replica.
        key = self._probe_key
        payload = secrets.token_bytes(64)
        try:
            async with asyncio.timeout(self._probe_timeout), self._probe_lock:
                await self._round_trip(key, payload)
        except TimeoutError:
            raise StorageUnavailable(
                f"storage did not complete a write, read and delete within "
                f"{self._probe_timeout:g} s ({self._description})"
            ) from None

    async def _round_trip(self, key: str, payload: bytes) -> None:
        try:
            await obstore.put_async(self._store, key, payload, use_multipart=False)
        except (ObstoreError, OSError) as exc:
            raise unavailable("probe write", key, exc) from exc
        try:
            try:
                result = await obstore.get_async(self._store, key)
                stored = bytes(await result.bytes_async())
            except (FileNotFoundError, ObstoreNotFound, ObstoreError, OSError) as exc:
                raise unavailable("probe read", key, exc) from exc
            if stored != payload:
                raise StorageUnavailable(
                    f"storage returned different bytes than were written ({self._description})"
                )
        finally:
            await self.delete(key)

    def local_path(self, key: str) -> Path | None:
        """None: the objects are not files of this machine."""
        validate_key(key)
        return None

    async def remove_incomplete_writes(self, prefix: str) -> int:
        """0, because obstore cannot list unfinished multipart uploads; an abandoned one
        (the process was killed mid-upload) stays invisible and is removed by the bucket's
        AbortIncompleteMultipartUpload lifecycle rule."""
        validate_prefix(prefix)
        return 0

    async def remove_leftovers(self, prefix: str, keys: Sequence[str]) -> int:
        """``keys`` deleted (unfinished multipart uploads stay, as in
        :meth:`remove_incomplete_writes`); returns 0."""
        validate_prefix(prefix)
        for key in keys:
            validate_key(key)
        for key in keys:
            await self.delete(key)
        return 0

    async def close(self) -> None:
        """Nothing to release: obstore's connection pools go with the store objects."""


def _pieces(chunk: bytes) -> Iterator[bytes]:
    """Split chunks larger than twice READ_CHUNK_SIZE (the memory store returns whole
    objects) so consumers see bounded pieces."""
    if len(chunk) <= 2 * READ_CHUNK_SIZE:
        yield chunk
        return
    view = memoryview(chunk)
    for offset in range(0, len(chunk), READ_CHUNK_SIZE):
        yield bytes(view[offset : offset + READ_CHUNK_SIZE])


def _info(meta: ObjectMeta) -> BlobInfo:
    return BlobInfo(
        key=meta["path"],
        size=meta["size"],
        last_modified=meta["last_modified"],
        etag=meta["e_tag"],
    )
