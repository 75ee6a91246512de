"""Collections and their versions (SPEC section 6): the upload pipeline, downloads,
listings and the collection health report."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from backup_repository.domain import authz
from backup_repository.domain.authz import CollectionAction
from backup_repository.domain.errors import (
    AuthenticationFailed,
    Conflict,
    DependencyUnavailable,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    RequestTimeout,
)
from backup_repository.domain.identity import Collection
from backup_repository.domain.openpgp import NotOpenPGP, OpenPGPStreamChecker
from backup_repository.domain.quota import max_upload_size
from backup_repository.domain.rotation import versions_to_rotate
from backup_repository.domain.versions import StoredVersion
from backup_repository.domain.windows import is_window_open, upload_matches_windows
from backup_repository.services.auth import AuthContext
from backup_repository.services.events import (
    Action,
    Event,
    EventSink,
    NullSink,
    Outcome,
    RefusalReason,
    short_session,
)
from backup_repository.services.health import CheckResult
from backup_repository.services.leases import renewed_lease
from backup_repository.services.ports import (
    ConfigurationProvider,
    LockLost,
    SessionConsumed,
    VersionRecord,
    VersionRepository,
)
from backup_repository.storage.base import BlobNotFound, BlobStore, StorageError
from backup_repository.streams import ChunkWorker

logger = logging.getLogger(__name__)

COLLECTION_NOT_FOUND = "cannot find specified collection"
VERSION_NOT_FOUND = "cannot find specified version"
NOT_AUTHORIZED_UPLOAD = "not authorized to upload versions to this collection"
NOT_AUTHORIZED_DOWNLOAD = "not authorized to download versions from this collection"
NOT_AUTHORIZED_LIST = "not authorized to list versions"
WINDOW_CLOSED = "backup window does not allow you to send a backup at this time"
PARALLEL_UPLOAD = "cannot upload to same collection in parallel"
QUOTA_EXCEEDED = "filesize reached allowed limit"
HEALTH_CODE_INVALID = (
    "not authorized - invalid value of 'code' parameter: give the collection's health code "
    "as ?code= or as the Authorization header"
)
# What an unknown collection's health code is compared with: SHA-256 hex is 64 digits, as a
# real secret is, so the comparison takes as long (and a match still refuses).
_UNKNOWN_COLLECTION_SECRET = "0" * 64
STORAGE_UNAVAILABLE = "storage is unavailable, try again later"
# Turns a request body into the bytes of the file it carries (a form's field ``file``).
BodyDecoder = Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]
TOKEN_ALREADY_USED = "token was already used"  # noqa: S105 - a message, not a secret

# The upload lock is a lease renewed (every third of it) while the upload runs, so the lock
# of a replica that died frees itself within the lease.
DEFAULT_LOCK_LEASE = 30.0
# How often a download of ``latest`` is resolved again when its version was rotated away
# between resolving it and opening its object.
LATEST_ATTEMPTS = 3


@dataclass(frozen=True)
class Usage:
    versions: int
    bytes_used: int
    max_backups_count: int
    max_one_version_size: int
    max_collection_size: int


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


def stored(version: VersionRecord) -> StoredVersion:
    return StoredVersion(number=version.number, size=version.size, created_at=version.created_at)


def parse_version_ref(text: str) -> int | None:
    """``7``, ``v7`` or ``latest`` (None); anything else is a 404 for the caller."""
    ref = text.strip()
    if ref == "latest":
        return None
    if ref[:1] in {"v", "V"}:
        ref = ref[1:]
    if not ref.isascii() or not ref.isdigit() or len(ref) > 9:
        raise NotFound(VERSION_NOT_FOUND)
    return int(ref)


class CollectionHealthCheck(Protocol):
    """A check of the collection health report composed in by the composition root (e.g.
    ``services/integrity.py``'s ``VersionsIntegrityValidator``); runs after the built-in
    ones, in the order given."""

    name: str

    async def run(self, collection: Collection, live: Sequence[VersionRecord]) -> CheckResult: ...


class BackupService:
    def __init__(
        self,
        config: ConfigurationProvider,
        versions: VersionRepository,
        store: BlobStore,
        io_timeout: float,
        lock_lease: float = DEFAULT_LOCK_LEASE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        events: EventSink | None = None,
        health_checks: Sequence[CollectionHealthCheck] = (),
        instance: str | None = None,
    ) -> None:
        self._events: EventSink = events or NullSink()
        self._health_checks = tuple(health_checks)
        self._config = config
        self._versions = versions
        self._store = store
        self._io_timeout = io_timeout
        self._clock = clock
        self._lock_lease = lock_lease
        # Distinguishes this process's locks from other replicas' in the lock table:
        # ``<replica tag>/<life>`` (domain/replica.py) from the composition root.
        self._instance = instance or secrets.token_hex(8)
        # Collections the start-up clean-up of this process holds the lock of right now.
        self._cleaning: dict[str, asyncio.Event] = {}

    # -- lookups -------------------------------------------------------------------------

    def collection(self, collection_id: str) -> Collection:
        found = self._config.snapshot().collections.get(collection_id)
        if found is None:
            raise NotFound(COLLECTION_NOT_FOUND)
        return found

    def _authorize(
        self, ctx: AuthContext, collection: Collection, action: CollectionAction, message: str
    ) -> None:
        if not authz.may_act_on_collection(ctx.principal, collection, action):
            raise Forbidden(message)

    async def usage_of(self, collection: Collection) -> Usage:
        live = await self._versions.live_versions(collection.name)
        return Usage(
            versions=len(live),
            bytes_used=sum(v.size for v in live),
            max_backups_count=collection.max_backups_count,
            max_one_version_size=collection.max_one_version_size,
            max_collection_size=collection.max_collection_size,
        )

    # -- listing -------------------------------------------------------------------------

    async def list_versions(
        self, ctx: AuthContext, collection_id: str
    ) -> tuple[Collection, list[VersionRecord], Usage]:
        collection = self.collection(collection_id)
        self._authorize(ctx, collection, CollectionAction.LIST_VERSIONS, NOT_AUTHORIZED_LIST)
        live = await self._versions.live_versions(collection.name)
        usage = Usage(
            len(live),
            sum(v.size for v in live),
            collection.max_backups_count,
            collection.max_one_version_size,
            collection.max_collection_size,
        )
        return collection, list(reversed(live)), usage

    async def list_collections(self, ctx: AuthContext) -> list[tuple[Collection, Usage]]:
        visible = [
            c
            for c in sorted(self._config.snapshot().collections.values(), key=lambda c: c.name)
            if any(
                authz.may_act_on_collection(ctx.principal, c, action)
                for action in (
                    CollectionAction.LIST_VERSIONS,
                    CollectionAction.UPLOAD,
                    CollectionAction.DOWNLOAD,
                )
            )
        ]
        usage = await self._versions.usage()
        return [
            (
                c,
                Usage(
                    *usage.get(c.name, (0, 0)),
                    c.max_backups_count,
                    c.max_one_version_size,
                    c.max_collection_size,
                ),
            )
            for c in visible
        ]

    # -- download ------------------------------------------------------------------------

    async def prepare_download(
        self,
        ctx: AuthContext,
        collection_id: str,
        version_ref: str,
        byte_range: tuple[int | None, int | None] | None,
    ) -> Download:
        """Resolve and authorize a download; ``byte_range`` is a parsed single Range
        ``(first, last)`` as in ``bytes=first-last`` (either may be None). A refusal is
        told to the event sink here; the download itself by :meth:`ensure_object`, once
        the object is known to be there."""
        try:
            return await self._prepare_download(ctx, collection_id, version_ref, byte_range)
        except DomainError as exc:
            await self._download_refused(ctx, collection_id, exc)
            raise

    async def _download_refused(
        self, ctx: AuthContext, collection_id: str, exc: DomainError
    ) -> None:
        await self._events.emit(
            self._event(ctx, Action.DOWNLOAD, Outcome.FAILURE, collection_id, detail=exc.message)
        )

    def _event(
        self,
        ctx: AuthContext,
        action: Action,
        outcome: Outcome,
        collection_id: str,
        **details: object,
    ) -> Event:
        return Event(
            action,
            outcome,
            user=ctx.user.name,
            access_key=ctx.principal.access_key_name,
            client_ip=ctx.client_ip,
            collection=collection_id[:255],
            session=short_session(ctx.session.id),
            **details,  # type: ignore[arg-type]
        )

    async def _prepare_download(
        self,
        ctx: AuthContext,
        collection_id: str,
        version_ref: str,
        byte_range: tuple[int | None, int | None] | None,
    ) -> Download:
        collection = self.collection(collection_id)
        self._authorize(ctx, collection, CollectionAction.DOWNLOAD, NOT_AUTHORIZED_DOWNLOAD)
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

    async def stream(self, download: Download) -> AsyncIterator[bytes]:
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

    async def _raise_if_rotated(self, download: Download) -> None:
        """A missing object of a version that is no longer live was rotated away after the
        download resolved it: answer 404, as a moment later."""
        version = download.version
        if await self._versions.get_version(version.collection_id, version.number) is None:
            raise NotFound(VERSION_NOT_FOUND)

    async def ensure_object(self, ctx: AuthContext, download: Download) -> Download:
        """Refuse a download whose object vanished with a clear error rather than a stream
        that breaks after the headers were sent (a refusal is told to the event sink).

        ``latest`` resolved to a version that uploads rotated away meanwhile (a slow client
        and a small ``maxBackupsCount``) is resolved again: there is a newer one. Returns
        the download to send; call :meth:`record_download` once it is sent."""
        collection_id = download.version.collection_id
        for attempt in range(LATEST_ATTEMPTS):
            try:
                await self._ensure_object(download)
                return download
            except NotFound as exc:
                if not download.latest or attempt == LATEST_ATTEMPTS - 1:
                    await self._download_refused(ctx, collection_id, exc)
                    raise
            except DomainError as exc:
                await self._download_refused(ctx, collection_id, exc)
                raise
            try:
                download = await self._prepare_download(
                    ctx, collection_id, "latest", download.byte_range
                )
            except DomainError as exc:
                await self._download_refused(ctx, collection_id, exc)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def record_download(self, ctx: AuthContext, download: Download) -> None:
        """Tell the event sink a download is being sent (not for HEAD or 304 answers,
        which move no data)."""
        await self._events.emit(
            self._event(
                ctx,
                Action.DOWNLOAD,
                Outcome.SUCCESS,
                download.version.collection_id,
                version=download.version.number,
                size=download.length,
                detail="range" if download.partial else "",
            )
        )

    async def _ensure_object(self, download: Download) -> None:
        try:
            info = await self._store.stat(download.version.storage_key)
        except StorageError as exc:
            raise DependencyUnavailable(STORAGE_UNAVAILABLE) from exc
        if info is None:
            await self._raise_if_rotated(download)
            raise DependencyUnavailable(
                "the stored object of this version is missing; the collection health report "
                "shows which"
            )

    # -- upload --------------------------------------------------------------------------

    async def upload(
        self,
        ctx: AuthContext,
        collection_id: str,
        body: AsyncIterable[bytes],
        content_length: int | None,
        decode: BodyDecoder | None = None,
    ) -> VersionRecord:
        """Store ``body`` as the next version: the request body as received, of
        ``content_length`` bytes when known; ``decode`` turns it into the file's bytes (a
        form's field), None when the body is the file. Every byte of the body counts against
        the collection's limit. Accepted and refused uploads are told to the event sink with
        the bytes received and, when refused, the reason."""
        received = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal received
            async for chunk in body:
                received += len(chunk)
                yield chunk

        try:
            record = await self._upload(ctx, collection_id, counted(), content_length, decode)
        except asyncio.CancelledError:
            # The request's own time limit (told by the HTTP layer) or a shutdown.
            raise
        except BaseException as exc:
            await self.upload_refused(ctx, collection_id, exc, received or content_length)
            raise
        await self._events.emit(
            self._event(
                ctx,
                Action.UPLOAD,
                Outcome.SUCCESS,
                collection_id,
                version=record.number,
                size=record.size,
            )
        )
        return record

    async def upload_refused(
        self,
        ctx: AuthContext | None,
        collection_id: str,
        exc: BaseException,
        size: int | None = None,
        client_ip: str = "",
    ) -> None:
        """Tell the event sink an upload was refused; also called by the HTTP layer for what
        it refuses before the service sees the upload (no valid token, bad headers, a
        request that took too long)."""
        reason = refusal_reason(exc)
        detail = exc.message if isinstance(exc, DomainError) else type(exc).__name__
        if ctx is not None:
            event = self._event(
                ctx,
                Action.UPLOAD,
                Outcome.FAILURE,
                collection_id,
                size=size,
                reason=reason.value,
                detail=detail,
            )
        else:
            event = Event(
                Action.UPLOAD,
                Outcome.FAILURE,
                client_ip=client_ip,
                collection=collection_id[:255],
                size=size,
                reason=reason.value,
                detail=detail,
            )
        await self._events.emit(event)

    async def _upload(
        self,
        ctx: AuthContext,
        collection_id: str,
        body: AsyncIterable[bytes],
        content_length: int | None,
        decode: BodyDecoder | None,
    ) -> VersionRecord:
        collection = self.collection(collection_id)
        self._authorize(ctx, collection, CollectionAction.UPLOAD, NOT_AUTHORIZED_UPLOAD)
        now = self._clock()
        if not is_window_open(collection.windows, now) and not authz.may_act_on_collection(
            ctx.principal, collection, CollectionAction.UPLOAD_OUTSIDE_WINDOW
        ):
            raise Forbidden(WINDOW_CLOSED)

        owner = f"{self._instance}:{uuid.uuid4().hex[:16]}"
        cleaning = self._cleaning.get(collection.name)
        if cleaning is not None:
            # This process's start-up clean-up holds the lock for a moment: an upload right
            # after a restart waits for it (at most a lease) instead of being refused.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cleaning.wait(), self._lock_lease)
        last_number = await self._versions.try_lock(collection.name, owner, self._lock_lease)
        if last_number is None:
            raise Conflict(PARALLEL_UPLOAD)

        async def renew() -> bool:
            return await self._versions.renew_lock(collection.name, owner, self._lock_lease)

        async def release() -> None:
            await self._versions.release_lock(collection.name, owner)

        try:
            async with renewed_lease(
                renew, release, self._lock_lease, f"upload lock of {collection.name}"
            ):
                await self._clean_leftovers(collection, last_number)
                return await self._upload_locked(
                    ctx, collection, owner, last_number, body, content_length, decode
                )
        except LockLost as exc:
            # Lost while the upload ran (a stall longer than the lease): another upload may
            # be running now.
            raise Conflict(PARALLEL_UPLOAD) from exc

    async def _release(self, collection_id: str, owner: str) -> None:
        try:
            await self._versions.release_lock(collection_id, owner)
        except Exception:
            # The lease runs out by itself; log and go on.
            logger.exception("could not release the upload lock of %s", collection_id)

    async def _upload_locked(
        self,
        ctx: AuthContext,
        collection: Collection,
        owner: str,
        last_number: int,
        body: AsyncIterable[bytes],
        content_length: int | None,
        decode: BodyDecoder | None,
    ) -> VersionRecord:
        now = self._clock()
        live = await self._versions.live_versions(collection.name)
        by_number = {v.number: v for v in live}
        rotated = versions_to_rotate(collection, [stored(v) for v in live], now)
        rotated_numbers = {r.number for r in rotated}
        remaining = [stored(v) for v in live if v.number not in rotated_numbers]
        limit = max_upload_size(collection, remaining)
        if content_length is not None and content_length > limit:
            raise PayloadTooLarge(QUOTA_EXCEEDED)
        if decode is not None:
            # A form: its every byte counts, not only the file's (which are fewer).
            body = decode(_at_most(body, limit))

        number = last_number + 1
        filename = collection.filename_for(number)
        key = f"{collection.name}/{filename}"
        digest = hashlib.sha256()
        checker = OpenPGPStreamChecker()
        size = 0

        async def checked() -> AsyncIterator[bytes]:
            nonlocal size
            # SHA-256 runs in a thread of its own, overlapping the network and the storage.
            hasher = ChunkWorker(digest.update, name="upload-sha256")
            try:
                async for chunk in body:
                    if not chunk:
                        continue
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(QUOTA_EXCEEDED)
                    checker.feed(chunk)
                    await hasher.submit(chunk)
                    yield chunk
                checker.finish()
                await hasher.finish()
                # Last chance before the object becomes visible under its final name: if the
                # lease was lost meanwhile, that name may now belong to another upload.
                if not await self._versions.renew_lock(collection.name, owner, self._lock_lease):
                    raise LockLost(f"upload lock of {collection.name} was lost")
            except BaseException:
                await hasher.abort()
                raise

        try:
            async with asyncio.timeout(self._io_timeout):
                await self._store.put_stream(key, checked())
        except (InvalidInput, PayloadTooLarge):
            raise
        except LockLost as exc:
            raise Conflict(PARALLEL_UPLOAD) from exc
        except StorageError as exc:
            logger.warning("storage failed during upload to %s: %s", key, exc)
            raise DependencyUnavailable(STORAGE_UNAVAILABLE) from exc

        record = VersionRecord(
            id=str(uuid.uuid4()),
            collection_id=collection.name,
            number=number,
            filename=filename,
            storage_key=key,
            size=size,
            sha256=digest.hexdigest(),
            session_id=ctx.session.id,
            user=ctx.user.name,
            created_at=now,
            updated_at=now,
        )
        rotated_records = [by_number[r.number] for r in rotated]
        # A single-use token is consumed in the transaction that records its upload, so two
        # uploads with it (on any replicas) can never both be recorded.
        single_use = ctx.session.single_use_collection is not None
        try:
            await self._versions.commit_version(
                record,
                owner,
                [r.id for r in rotated_records],
                consume_session_id=ctx.session.id if single_use else None,
            )
        except SessionConsumed:
            # Used (or revoked) meanwhile: nothing was recorded; the object goes.
            await asyncio.shield(self._delete_quietly(key))
            raise AuthenticationFailed(TOKEN_ALREADY_USED) from None
        except LockLost as exc:
            # The name may now be the next holder's: leave it alone (its clean-up removes
            # the object if nobody records it).
            raise Conflict(PARALLEL_UPLOAD) from exc
        except (DependencyUnavailable, asyncio.CancelledError):
            # The connection broke or the request was cancelled while committing: the
            # version may well be recorded, so its object stays. If it was not, the next
            # clean-up under the lock removes it (the counter tells which).
            raise
        except BaseException:
            # Certainly not recorded: the object must not stay behind as an orphan.
            await asyncio.shield(self._delete_quietly(key))
            raise
        logger.info("stored %s v%d (%d bytes) for %s", collection.name, number, size, ctx.user.name)
        if single_use:
            await self._events.emit(
                self._event(
                    ctx,
                    Action.TOKEN_REVOKE,
                    Outcome.SUCCESS,
                    collection.name,
                    version=number,
                    detail=f"single-use token used by v{number}; session "
                    f"{short_session(ctx.session.id)} revoked",
                )
            )
        for gone in rotated_records:
            await self._events.emit(
                self._event(
                    ctx,
                    Action.ROTATION_DELETE,
                    Outcome.SUCCESS,
                    collection.name,
                    version=gone.number,
                    size=gone.size,
                    detail=f"rotated out by v{number} ({collection.strategy.name})",
                )
            )
        try:
            await self._purge(rotated_records)
        except Exception:
            # Recorded and answered as stored; the next clean-up purges what is left.
            logger.exception("could not purge the rotated versions of %s", collection.name)
        return record

    async def _purge(self, versions: Sequence[VersionRecord]) -> None:
        """Delete the objects of rotated versions (already marked deleted), then mark them
        purged. A failure leaves them for the next upload's clean-up."""
        purged: list[str] = []
        for version in versions:
            try:
                await self._store.delete(version.storage_key)
                purged.append(version.id)
            except StorageError as exc:
                logger.warning("could not delete rotated %s: %s", version.storage_key, exc)
        await self._versions.mark_purged(purged)

    async def _delete_quietly(self, key: str) -> None:
        try:
            await self._store.delete(key)
        except Exception:
            logger.exception("could not delete unrecorded object %s", key)

    async def _clean_leftovers(self, collection: Collection, last_number: int) -> None:
        """With the collection's lock held nothing else writes to it, so whatever an
        interrupted upload or rotation left behind can go: staging data, an object stored
        but never recorded (the next number), and objects of rotated versions."""
        try:
            await self._store.remove_incomplete_writes(f"{collection.name}/")
            unrecorded = f"{collection.name}/{collection.filename_for(last_number + 1)}"
            await self._store.delete(unrecorded)
            await self._purge(await self._versions.deleted_unpurged(collection.name))
        except StorageError as exc:
            raise DependencyUnavailable(STORAGE_UNAVAILABLE) from exc

    async def free_locks_of_previous_life(self, tag: str | None) -> int:
        """At start-up, before this process takes any lock: free the upload locks that a
        previous life of this replica (``tag``) held, or, with None, that any server held
        (SQLite: the server is the only process on the database). A replica killed
        mid-upload thus does not keep the collection locked until the lease runs out.
        Returns how many were freed; a failure is logged, never raised (the leases then
        run out by themselves)."""
        try:
            freed = await self._versions.release_server_locks(tag)
        except Exception as exc:
            logger.warning("could not free the upload locks of a previous run: %s", exc)
            return 0
        if freed:
            logger.warning(
                "freed %d upload locks that %s held before this start",
                freed,
                "a server" if tag is None else f"replica {tag}",
            )
        return freed

    async def clean_all(self) -> int:
        """Start-up clean-up of every collection whose lock is free. Returns how many
        collections were cleaned; failures are logged, never raised (the next upload to a
        collection cleans it again)."""
        cleaned = 0
        owner = f"{self._instance}:cleanup"
        for collection in list(self._config.snapshot().collections.values()):
            try:
                done = self._cleaning[collection.name] = asyncio.Event()
                try:
                    last = await self._versions.try_lock(collection.name, owner, self._lock_lease)
                    if last is None:
                        continue
                    try:
                        await self._clean_leftovers(collection, last)
                        cleaned += 1
                    finally:
                        await self._release(collection.name, owner)
                finally:
                    del self._cleaning[collection.name]
                    done.set()
            except Exception as exc:
                logger.warning("start-up clean-up of %s failed: %s", collection.name, exc)
        logger.info("start-up clean-up done for %d collections", cleaned)
        return cleaned

    # -- collection health ---------------------------------------------------------------

    async def health(self, collection_id: str, code: str) -> list[CheckResult]:
        # An unknown collection is refused exactly as a wrong code is, after the same work
        # (a SHA-256 and a constant-time comparison against a stand-in secret), so the
        # answer does not tell which collection names exist.
        collection = self._config.snapshot().collections.get(collection_id)
        secret = _UNKNOWN_COLLECTION_SECRET if collection is None else collection.health_secret
        matches = True  # a collection without a health secret is open to monitoring
        if secret is not None:
            given = hashlib.sha256(code.encode()).hexdigest()
            matches = hmac.compare_digest(given.encode(), secret.lower().encode())
        if collection is None or not matches:
            raise Forbidden(HEALTH_CODE_INVALID)
        now = self._clock()
        live = await self._versions.live_versions(collection.name)
        latest = live[-1] if live else None
        results = [
            self._window_check(collection, latest, now),
            self._size_check(collection, live),
            self._sum_check(collection, live),
            await self._objects_check(live),
        ]
        for check in self._health_checks:
            results.append(await check.run(collection, live))
        return results

    @staticmethod
    def _window_check(
        collection: Collection, latest: VersionRecord | None, now: datetime
    ) -> CheckResult:
        name = "BackupWindowValidator"
        ok = upload_matches_windows(collection.windows, latest.created_at if latest else None, now)
        if not collection.windows:
            return CheckResult(name, True, "no backup windows defined")
        if ok:
            return CheckResult(name, True, "the latest version was uploaded in time")
        return CheckResult(name, False, "no version was uploaded in the most recent backup window")

    @staticmethod
    def _size_check(collection: Collection, live: Sequence[VersionRecord]) -> CheckResult:
        name = "VersionsSizeValidator"
        over = [v for v in live if v.size > collection.max_one_version_size]
        if over:
            numbers = ", ".join(f"v{v.number} ({v.size} bytes)" for v in over)
            return CheckResult(
                name,
                False,
                f"versions over maxOneVersionSize ({collection.max_one_version_size} bytes): "
                f"{numbers}",
            )
        return CheckResult(name, True, "every version is within maxOneVersionSize")

    @staticmethod
    def _sum_check(collection: Collection, live: Sequence[VersionRecord]) -> CheckResult:
        name = "SumOfVersionsValidator"
        total = sum(v.size for v in live)
        if total > collection.max_collection_size:
            return CheckResult(
                name,
                False,
                f"versions use {total} bytes, over maxCollectionSize "
                f"({collection.max_collection_size} bytes)",
            )
        return CheckResult(
            name, True, f"versions use {total} of {collection.max_collection_size} bytes"
        )

    async def _objects_check(self, live: Sequence[VersionRecord]) -> CheckResult:
        name = "StoredObjectsValidator"
        problems: list[str] = []
        try:
            for version in live:
                info = await self._store.stat(version.storage_key)
                if info is None:
                    problems.append(f"v{version.number}: stored object is missing")
                elif info.size != version.size:
                    problems.append(
                        f"v{version.number}: stored object has {info.size} bytes, "
                        f"{version.size} recorded"
                    )
        except StorageError as exc:
            return CheckResult(name, False, f"storage is unavailable: {type(exc).__name__}")
        if problems:
            return CheckResult(name, False, "; ".join(problems), tuple(problems))
        return CheckResult(name, True, f"{len(live)} stored objects present with recorded sizes")


async def _at_most(chunks: AsyncIterable[bytes], limit: int) -> AsyncIterator[bytes]:
    """``chunks`` until more than ``limit`` bytes came: then PayloadTooLarge."""
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(QUOTA_EXCEEDED)
        yield chunk


def refusal_reason(exc: BaseException) -> RefusalReason:
    """Why an upload failed, from the error that ended it."""
    if isinstance(exc, AuthenticationFailed):
        return RefusalReason.AUTH
    if isinstance(exc, Forbidden):
        return RefusalReason.WINDOW if exc.message == WINDOW_CLOSED else RefusalReason.AUTH
    if isinstance(exc, Conflict):
        return RefusalReason.LOCK
    if isinstance(exc, PayloadTooLarge):
        return RefusalReason.QUOTA
    if isinstance(exc, NotOpenPGP):
        return RefusalReason.OPENPGP
    if isinstance(exc, NotFound):
        return RefusalReason.NOT_FOUND
    if isinstance(exc, InvalidInput):
        return RefusalReason.INVALID
    if isinstance(exc, RequestTimeout | TimeoutError):
        return RefusalReason.TIMEOUT
    if isinstance(exc, DependencyUnavailable | StorageError):
        return RefusalReason.STORAGE
    return RefusalReason.ABORTED


def resolve_range(byte_range: tuple[int | None, int | None], size: int) -> tuple[int, int]:
    """``[start, end)`` for a parsed ``bytes=first-last``; raises RangeNotSatisfiable."""
    first, last = byte_range
    if first is None:
        if last is None or last == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - last), size
    if first >= size or (last is not None and last < first):
        raise RangeNotSatisfiable(size)
    end = size if last is None else min(last + 1, size)
    return first, end
