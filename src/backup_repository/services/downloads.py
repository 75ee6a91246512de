"""Downloads of versions: resolve the version asked for (``7``, ``v7``, ``latest``) and the
byte range, check its object is there, and hand the HTTP layer what to send: a local file
with its stat (sent zero-copy), or a stream whose first chunk was already read. Every
download that sends data, and every refusal, emits an event here.

``latest`` resolved to a version that uploads rotate away meanwhile (a slow client and a
small ``maxBackupsCount``) is resolved again: there is a newer one. A version asked for by
number that was rotated away is a clean 404.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from backup_repository.domain.authz import CollectionAction
from backup_repository.domain.errors import DependencyUnavailable, DomainError, NotFound
from backup_repository.domain.versions import VERSION_NOT_FOUND, parse_version_ref, resolve_range
from backup_repository.services.auth import AuthContext
from backup_repository.services.collections import (
    NOT_AUTHORIZED_DOWNLOAD,
    STORAGE_UNAVAILABLE,
    CollectionService,
    caller_event,
)
from backup_repository.services.events import Action, EventSink, NullSink, Outcome
from backup_repository.services.ports import VersionRecord, VersionRepository
from backup_repository.storage.base import BlobNotFound, BlobStore, StorageError

logger = logging.getLogger(__name__)

OBJECT_MISSING = (
    "the stored object of this version is missing; the collection health report shows which"
)
# How often a download of ``latest`` is resolved again when its version was rotated away
# between resolving it and opening its object.
LATEST_ATTEMPTS = 3


@dataclass(frozen=True)
class Download:
    version: VersionRecord
    start: int
    end: int  # exclusive
    partial: bool
    local_path: str | None
    # Asked for as ``latest`` (with this range): may be resolved again if rotated away.
    latest: bool = False
    byte_range: tuple[int | None, int | None] | None = None

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def etag(self) -> str:
        return f'"{self.version.sha256}"'


@dataclass(frozen=True)
class Outgoing:
    """What to answer: at most one of ``file`` (a local path and its stat) and ``chunks``
    (the body, its first chunk already read) is set; neither for HEAD and for 304
    (``not_modified``)."""

    download: Download
    not_modified: bool = False
    file: tuple[str, os.stat_result] | None = None
    chunks: AsyncIterator[bytes] | None = None


class DownloadService:
    def __init__(
        self,
        collections: CollectionService,
        versions: VersionRepository,
        store: BlobStore,
        events: EventSink | None = None,
    ) -> None:
        self._collections = collections
        self._versions = versions
        self._store = store
        self._events: EventSink = events or NullSink()

    async def download(
        self,
        ctx: AuthContext,
        collection_id: str,
        version_ref: str,
        byte_range: tuple[int | None, int | None] | None,
        *,
        if_none_match: str | None = None,
        body: bool = True,
        local_file: bool = True,
    ) -> Outgoing:
        """What to send for a download; ``byte_range`` is a parsed single Range
        ``(first, last)`` as in ``bytes=first-last`` (either may be None). ``body`` False
        (HEAD) checks the object but sends nothing; ``local_file`` False streams even a
        file on local storage."""
        try:
            resolved = await self.resolve(ctx, collection_id, version_ref, byte_range)
        except DomainError as exc:
            await self._refused(ctx, collection_id, exc)
            raise
        return await self.open(
            ctx, resolved, if_none_match=if_none_match, body=body, local_file=local_file
        )

    async def resolve(
        self,
        ctx: AuthContext,
        collection_id: str,
        version_ref: str,
        byte_range: tuple[int | None, int | None] | None,
    ) -> Download:
        """Authorize the download and resolve the version and the range (no events)."""
        collection = self._collections.authorized(
            ctx, collection_id, CollectionAction.DOWNLOAD, NOT_AUTHORIZED_DOWNLOAD
        )
        number = parse_version_ref(version_ref)
        if number is None:
            version = await self._versions.latest_version(collection.name)
        else:
            version = await self._versions.get_version(collection.name, number)
        if version is None:
            raise NotFound(VERSION_NOT_FOUND)
        start, end, partial = 0, version.size, False
        if byte_range is not None:
            start, end = resolve_range(byte_range, version.size)
            partial = True
        path = self._store.local_path(version.storage_key)
        return Download(
            version,
            start,
            end,
            partial,
            str(path) if path else None,
            latest=number is None,
            byte_range=byte_range,
        )

    async def open(
        self,
        ctx: AuthContext,
        download: Download,
        *,
        if_none_match: str | None = None,
        body: bool = True,
        local_file: bool = True,
    ) -> Outgoing:
        """The second half of :meth:`download`, for a download already resolved."""
        if if_none_match and if_none_match.strip() in {download.etag, "*"}:
            return Outgoing(download, not_modified=True)
        collection_id = download.version.collection_id
        try:
            for attempt in range(LATEST_ATTEMPTS):
                try:
                    return await self._open(ctx, download, body, local_file)
                except NotFound:
                    if not download.latest or attempt == LATEST_ATTEMPTS - 1:
                        raise
                download = await self.resolve(ctx, collection_id, "latest", download.byte_range)
        except DomainError as exc:
            await self._refused(ctx, collection_id, exc)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _open(
        self, ctx: AuthContext, download: Download, body: bool, local_file: bool
    ) -> Outgoing:
        """Refuse a download whose object vanished with a clear error rather than a stream
        that breaks after the headers were sent; NotFound when it was rotated away."""
        await self._ensure_object(download)
        if not body:
            return Outgoing(download)
        if local_file and download.local_path is not None:
            # Sent by the server itself (zero-copy where it supports the ASGI path-send
            # extension). The event comes before the stat, so that nothing slower than a
            # stat separates it from the sending; the stat is taken here, not by the
            # response, so that a rotation since the check above is still a clean answer.
            await self._record(ctx, download)
            try:
                stat = await asyncio.to_thread(os.stat, download.local_path)
            except FileNotFoundError:
                await self._raise_if_rotated(download)
                raise DependencyUnavailable(OBJECT_MISSING) from None
            return Outgoing(download, file=(download.local_path, stat))
        # The first chunk before the headers: a missing object is still a clean 404/503.
        chunks = self._stream(download)
        first = await anext(chunks, b"")
        await self._record(ctx, download)
        return Outgoing(download, chunks=_prepend(first, chunks))

    async def _stream(self, download: Download) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._store.read(
                download.version.storage_key, download.start, download.end
            ):
                yield chunk
        except BlobNotFound:
            await self._raise_if_rotated(download)
            logger.error(
                "stored object of %s v%d is missing",
                download.version.collection_id,
                download.version.number,
            )
            raise
        except StorageError as exc:
            raise DependencyUnavailable(STORAGE_UNAVAILABLE) from exc

    async def _ensure_object(self, download: Download) -> None:
        try:
            info = await self._store.stat(download.version.storage_key)
        except StorageError as exc:
            raise DependencyUnavailable(STORAGE_UNAVAILABLE) from exc
        if info is None:
            await self._raise_if_rotated(download)
            raise DependencyUnavailable(OBJECT_MISSING)

    async def _raise_if_rotated(self, download: Download) -> None:
        """A missing object of a version that is no longer live was rotated away after the
        download resolved it: answer 404, as a moment later."""
        version = download.version
        if await self._versions.get_version(version.collection_id, version.number) is None:
            raise NotFound(VERSION_NOT_FOUND)

    async def _record(self, ctx: AuthContext, download: Download) -> None:
        """A download is being sent (not for HEAD or 304 answers, which move no data)."""
        await self._events.emit(
            caller_event(
                ctx,
                Action.DOWNLOAD,
                Outcome.SUCCESS,
                download.version.collection_id,
                version=download.version.number,
                size=download.length,
                detail="range" if download.partial else "",
            )
        )

    async def _refused(self, ctx: AuthContext, collection_id: str, exc: DomainError) -> None:
        await self._events.emit(
            caller_event(ctx, Action.DOWNLOAD, Outcome.FAILURE, collection_id, detail=exc.message)
        )


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk
