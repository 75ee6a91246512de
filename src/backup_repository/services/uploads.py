"""The upload pipeline: a new version of a collection, from the request's token and headers
to the recorded version (docs/architecture.md, "The upload pipeline").

:meth:`UploadService.upload` checks the caller, the headers and the collection's rights and
windows, takes the collection's upload lock (a lease renewed while the upload runs,
services/leases.py), cleans up what an interrupted upload left, and then, in
:meth:`UploadService._upload_locked`: plans (number, rotation, quota), stores the body
(counted, hashed and checked as OpenPGP on its way to the store), commits the version and
announces it. Every refusal, whichever step refuses, emits one event with its reason
(services/upload_refusals.py), here and nowhere else.

The events of an accepted upload (the token it used up, the versions it rotated out, the
upload) are built before its commit: when the sink keeps rows (the audit log,
services/events.py ``keeps_rows``) the commit's transaction writes them with the version,
and they are handed over with ``emit_kept`` once it committed; otherwise with ``emit_all``
after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from backup_repository.domain import authz
from backup_repository.domain.authz import CollectionAction
from backup_repository.domain.errors import (
    AuthenticationFailed,
    Conflict,
    DependencyUnavailable,
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
)
from backup_repository.domain.identity import Collection
from backup_repository.domain.openpgp import OpenPGPStreamChecker
from backup_repository.domain.quota import QuotaRule, UploadLimit, next_upload
from backup_repository.domain.signatures import TrustedKey, armor, decide, unsigned
from backup_repository.domain.versions import StoredVersion
from backup_repository.domain.windows import is_window_open, window_closed
from backup_repository.services.auth import AuthContext
from backup_repository.services.collections import (
    NOT_AUTHORIZED_UPLOAD,
    STORAGE_UNAVAILABLE,
    CollectionService,
    caller_event,
)
from backup_repository.services.events import (
    Action,
    Event,
    EventSink,
    NullSink,
    Outcome,
    emit_all,
    emit_kept,
    keeps_rows,
    short_session,
)
from backup_repository.services.leases import Lease, renewed_upload_lock
from backup_repository.services.ports import (
    ConfigurationProvider,
    LockedCollection,
    LockLost,
    SessionConsumed,
    VersionRecord,
    VersionRepository,
)
from backup_repository.services.retention import RetentionService
from backup_repository.services.signatures import SignatureService, StreamVerification
from backup_repository.services.upload_cleanup import UploadCleanup
from backup_repository.services.upload_refusals import refusal_event
from backup_repository.storage.base import BlobStore, StorageError
from backup_repository.streams import ChunkWorker

logger = logging.getLogger(__name__)

PARALLEL_UPLOAD = "cannot upload to same collection in parallel"
QUOTA_EXCEEDED = "filesize reached allowed limit"
TOKEN_ALREADY_USED = "token was already used"  # noqa: S105 - a message, not a secret
INVALID_CONTENT_LENGTH = "invalid Content-Length header"
EMPTY_UPLOAD = "sent empty data"
TOOK_TOO_LONG = "Request took too long"
_CONTENT_LENGTH = re.compile(r"^\d{1,19}$")

# The upload lock is a lease renewed (every third of it) while the upload runs, so the lock
# of a replica that died frees itself within the lease.
DEFAULT_LOCK_LEASE = 30.0
# The whole upload's time limit (--http-upload-timeout) when none is given.
DEFAULT_DEADLINE = 7200.0

# Turns a request body into the bytes of the file it carries (a form's field ``file``).
BodyDecoder = Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]


@dataclass(frozen=True)
class UploadRequest:
    """An upload as the HTTP layer received it. The service runs its callables in this
    order, inside its own error handling, so that every refusal is emitted in one place:
    ``authenticate`` (the caller, from the request's token), the Content-Length check,
    ``reading_body`` (from here on an error answer must drain the unread body), then
    ``decoder`` (None for a raw body, else what turns the form into the file's bytes), and
    ``signature`` when the file's first bytes arrive."""

    collection_id: str
    client_ip: str
    content_length: str | None  # the header as sent
    body: AsyncIterable[bytes]
    authenticate: Callable[[], Awaitable[AuthContext]]
    decoder: Callable[[], BodyDecoder | None]
    reading_body: Callable[[], None] = lambda: None
    # The detached signature sent with the upload (the X-Backup-Signature header, or the
    # form's part "signature"), asked for when the file's first bytes arrive; None: unsigned.
    signature: Callable[[], bytes | None] = lambda: None


@dataclass(frozen=True)
class _Stored:
    """What storing the body found: its size, SHA-256, and who signed it."""

    size: int
    sha256: str
    signer: TrustedKey | None = None
    signature: str | None = None  # armoured


@dataclass(frozen=True)
class _Plan:
    """What an upload under the lock will store, and which versions it rotates out."""

    now: datetime
    number: int
    filename: str
    key: str
    quota: UploadLimit
    rotated: list[VersionRecord]

    @property
    def limit(self) -> int:
        return self.quota.bytes


@dataclass(frozen=True)
class _Recorded:
    """A version recorded, and what its upload still has to announce and purge: its events,
    whose rows the commit wrote when ``kept`` (unless ``audit_failed`` says why not)."""

    collection: Collection
    record: VersionRecord
    rotated: list[VersionRecord]
    events: list[Event]
    kept: bool
    audit_failed: Exception | None = None


class UploadService:
    def __init__(
        self,
        collections: CollectionService,
        config: ConfigurationProvider,
        versions: VersionRepository,
        store: BlobStore,
        io_timeout: float,
        *,
        deadline: float = DEFAULT_DEADLINE,
        lock_lease: float = DEFAULT_LOCK_LEASE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        events: EventSink | None = None,
        instance: str | None = None,
        signatures: SignatureService | None = None,
    ) -> None:
        self._collections = collections
        self._config = config
        self._versions = versions
        self._store = store
        self._io_timeout = io_timeout
        self._deadline = deadline
        self._lock_lease = lock_lease
        # What "now" is to the upload pipeline and the retention dry run (a test may set it).
        self.clock = clock
        self._events: EventSink = events or NullSink()
        # Verifies the signatures of trusted uploaders (services/signatures.py).
        self.signatures = signatures or SignatureService()
        # Distinguishes this process's locks from other replicas' in the lock table:
        # ``<replica tag>/<life>`` (domain/replica.py) from the composition root.
        self._instance = instance or secrets.token_hex(8)
        self.cleanup = UploadCleanup(config, versions, store, lock_lease, self._instance)
        # The retention dry run: what the next upload rotates out, by this service's clock.
        self.retention = RetentionService(collections, versions, lambda: self.clock())

    async def upload(self, request: UploadRequest) -> VersionRecord:
        """Store the request's body as the next version. Every byte of the body counts
        against the collection's limit (a form's too, not only its file's). An accepted
        upload emits an event with its version; a refused one an event with the bytes
        received and the reason."""
        ctx: AuthContext | None = None
        size: int | None = None  # known once the service works on the body
        received = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal received
            async for chunk in request.body:
                received += len(chunk)
                yield chunk

        try:
            ctx = await request.authenticate()
            content_length = _content_length(request.content_length)
            request.reading_body()
            decode = request.decoder()
            size = content_length
            try:
                async with asyncio.timeout(self._deadline):
                    recorded = await self._upload(
                        ctx,
                        request.collection_id,
                        counted(),
                        content_length,
                        decode,
                        request.signature,
                    )
            except TimeoutError:
                raise RequestTimeout(TOOK_TOO_LONG) from None
        except asyncio.CancelledError:
            # A shutdown, or the client went away.
            raise
        except BaseException as exc:
            await self._events.emit(
                refusal_event(ctx, request.collection_id, request.client_ip, exc, received or size)
            )
            raise
        await self._announce(ctx, recorded)
        return recorded.record

    def warnings(self, record: VersionRecord) -> list[str]:
        """What the uploader of ``record`` should be told although it was stored."""
        collection = self._config.snapshot().collections.get(record.collection_id)
        if collection is None:
            return []
        warning = extra_space_warning(collection, record.size)
        return [warning] if warning else []

    async def _upload(
        self,
        ctx: AuthContext,
        collection_id: str,
        body: AsyncIterable[bytes],
        content_length: int | None,
        decode: BodyDecoder | None,
        signature: Callable[[], bytes | None] = lambda: None,
    ) -> _Recorded:
        collection = self._collections.authorized(
            ctx, collection_id, CollectionAction.UPLOAD, NOT_AUTHORIZED_UPLOAD
        )
        now = self.clock()
        if not is_window_open(collection.windows, now) and not (
            authz.may_act_on_collection(
                ctx.principal, collection, CollectionAction.UPLOAD_OUTSIDE_WINDOW
            )
        ):
            raise window_closed(collection.windows, now)

        owner = f"{self._instance}:{uuid.uuid4().hex[:16]}"
        await self.cleanup.wait_for(collection)
        taken_at = time.monotonic()
        # The lock, the counter and the versions to plan with, in one transaction, which
        # also marks purged what an earlier upload of this process rotated out and deleted.
        purged = self.cleanup.take_unmarked(collection.name)
        try:
            locked = await self._versions.lock_for_upload(
                collection.name, owner, self._lock_lease, purged
            )
        except BaseException:
            self.cleanup.unmarked_again(collection.name, purged)
            raise
        if locked is None:
            self.cleanup.unmarked_again(collection.name, purged)
            raise Conflict(PARALLEL_UPLOAD)

        try:
            async with renewed_upload_lock(
                self._versions, collection.name, owner, self._lock_lease, taken_at=taken_at
            ) as lease:
                await self.cleanup.clean_leftovers(collection, locked.last_number, locked.unpurged)
                return await self._upload_locked(
                    ctx, collection, owner, lease, locked, body, content_length, decode, signature
                )
        except LockLost as exc:
            # Lost while the upload ran (a stall longer than the lease): another upload may
            # be running now.
            raise Conflict(PARALLEL_UPLOAD) from exc

    async def _upload_locked(
        self,
        ctx: AuthContext,
        collection: Collection,
        owner: str,
        lease: Lease,
        locked: LockedCollection,
        body: AsyncIterable[bytes],
        content_length: int | None,
        decode: BodyDecoder | None,
        signature: Callable[[], bytes | None] = lambda: None,
    ) -> _Recorded:
        plan = self._plan(collection, locked)
        if content_length is not None and content_length > plan.limit:
            raise quota_exceeded(collection, plan.quota, content_length, declared=True)
        if decode is not None:
            # A form: its every byte counts, not only the file's (which are fewer).
            body = decode(_at_most(body, collection, plan.quota))
        stored = await self._store_body(collection, lease, plan, body, signature)
        record = VersionRecord(
            id=str(uuid.uuid4()),
            collection_id=collection.name,
            number=plan.number,
            filename=plan.filename,
            storage_key=plan.key,
            size=stored.size,
            sha256=stored.sha256,
            session_id=ctx.session.id,
            user=ctx.user.name,
            access_key=ctx.principal.access_key_name,
            created_at=plan.now,
            updated_at=plan.now,
            signer_fingerprint=stored.signer.fingerprint if stored.signer else None,
            signature=stored.signature,
        )
        events = _accepted_events(ctx, collection, record, plan.rotated)
        kept = keeps_rows(self._events)
        failed = await self._commit(ctx, record, owner, lease, plan, events if kept else [])
        return _Recorded(collection, record, plan.rotated, events, kept, failed)

    def _plan(self, collection: Collection, locked: LockedCollection) -> _Plan:
        """The next number and its object, the versions this upload rotates out, and the
        largest upload the quota leaves room for once they are gone."""
        # The version is recorded with this time, so the rotation computed here (gfs looks
        # at the new version's period) is the one its commit makes.
        now = self.clock()
        live = locked.live
        by_number = {v.number: v for v in live}
        upcoming = next_upload(collection, [_stored(v) for v in live], now)
        number = locked.last_number + 1
        filename = collection.filename_for(number)
        return _Plan(
            now=now,
            number=number,
            filename=filename,
            key=f"{collection.name}/{filename}",
            quota=upcoming.limit,
            rotated=[by_number[r.number] for r in upcoming.rotated],
        )

    async def _store_body(
        self,
        collection: Collection,
        lease: Lease,
        plan: _Plan,
        body: AsyncIterable[bytes],
        signature_of: Callable[[], bytes | None] = lambda: None,
    ) -> _Stored:
        """Stream ``body`` into the store under the plan's key, counting, hashing (SHA-256)
        and checking it as OpenPGP on its way, and, when the collection has trusted
        uploaders, verifying its detached signature with gpg (fed the same chunks, in a
        thread of its own); the object becomes visible only when all of that passed."""
        digest = hashlib.sha256()
        checker = OpenPGPStreamChecker()
        size = 0
        signed = _SignedStream(self.signatures, collection, signature_of)

        async def checked() -> AsyncIterator[bytes]:
            nonlocal size
            try:
                async for chunk in body:
                    if not chunk:
                        continue
                    if size == 0:
                        await signed.start()
                    size += len(chunk)
                    if size > plan.limit:
                        raise quota_exceeded(collection, plan.quota, size, declared=False)
                    checker.feed(chunk)
                    await signed.submit(chunk)
                    yield chunk
                checker.finish()
                # Refused here, before the object becomes visible: nothing stored.
                await signed.finish()
                # Last chance before the object becomes visible under its final name: if the
                # lease was lost meanwhile, that name may now belong to another upload. (The
                # database is asked when the lease was confirmed over a third of it ago.)
                if not await lease.ensure_held():
                    raise LockLost(f"upload lock of {collection.name} was lost")
            except BaseException:
                await signed.abort()
                raise

        try:
            async with asyncio.timeout(self._io_timeout):
                # SHA-256 runs in the storage's writing thread, overlapping the network.
                await self._store.put_stream(plan.key, checked(), observe=digest.update)
        except (InvalidInput, PayloadTooLarge):
            raise
        except LockLost as exc:
            raise Conflict(PARALLEL_UPLOAD) from exc
        except StorageError as exc:
            logger.warning("storage failed during upload to %s: %s", plan.key, exc)
            raise DependencyUnavailable(STORAGE_UNAVAILABLE) from exc
        return _Stored(size, digest.hexdigest(), signed.signer, signed.armored)

    async def _commit(
        self,
        ctx: AuthContext,
        record: VersionRecord,
        owner: str,
        lease: Lease,
        plan: _Plan,
        audit: list[Event],
    ) -> Exception | None:
        """Record the version (still under our lock, with the next number), mark the
        rotated versions deleted, free the lock and write the rows of ``audit``, in one
        transaction; returns the error that kept the audit rows out of it, if one did. A
        single-use token is consumed in the same transaction, so two uploads with it (on
        any replicas) can never both be recorded."""
        single_use = ctx.session.single_use_collection is not None
        # The transaction frees the lock: its renewal must not take that for a loss.
        lease.stop_renewing()
        try:
            failed = await self._versions.commit_version(
                record,
                owner,
                [r.id for r in plan.rotated],
                consume_session_id=ctx.session.id if single_use else None,
                release=True,
                audit=audit,
            )
            lease.released()
            return failed
        except SessionConsumed:
            # Used (or revoked) meanwhile: nothing was recorded; the object goes.
            await asyncio.shield(self.cleanup.delete_quietly(record.storage_key))
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
            await asyncio.shield(self.cleanup.delete_quietly(record.storage_key))
            raise

    async def _announce(self, ctx: AuthContext, recorded: _Recorded) -> None:
        """Log the new version; hand over its events (their rows are already written when
        ``recorded.kept``); then delete the objects of the rotated versions (outside of the
        lock: their names are never given again, and the next clean-up purges what is
        left), whose rows the collection's next upload marks purged in its lock step."""
        collection, record = recorded.collection, recorded.record
        logger.info(
            "stored %s v%d (%d bytes) for %s",
            collection.name,
            record.number,
            record.size,
            ctx.user.name,
        )
        if recorded.kept:
            emitted = emit_kept(self._events, recorded.events, recorded.audit_failed)
        else:
            emitted = emit_all(self._events, recorded.events)
        # The listeners first: they only log, count and wake a loop (the audit rows are
        # written by the commit, or by the audit log without its rows: handed over in
        # turn), so the deletion after them waits for nothing, and needs no task of its own.
        await emitted
        if recorded.rotated:
            await self._purge(collection, recorded.rotated)

    async def _purge(self, collection: Collection, rotated: list[VersionRecord]) -> None:
        try:
            # Marked purged by the collection's next upload (or its clean-up).
            await self.cleanup.purge(rotated, mark_later=True)
        except Exception:
            # Recorded and answered as stored; the next clean-up purges what is left.
            logger.exception("could not purge the rotated versions of %s", collection.name)


def _accepted_events(
    ctx: AuthContext, collection: Collection, record: VersionRecord, rotated: list[VersionRecord]
) -> list[Event]:
    """The events of an accepted upload, in this order: the token it used up (a single-use
    one), the versions it rotated out, the upload itself."""
    number = record.number
    events: list[Event] = []
    if ctx.session.single_use_collection is not None:
        events.append(
            caller_event(
                ctx,
                Action.TOKEN_REVOKE,
                Outcome.SUCCESS,
                collection.name,
                version=number,
                detail=f"single-use token used by v{number}; session "
                f"{short_session(ctx.session.id)} revoked",
            )
        )
    events.extend(
        caller_event(
            ctx,
            Action.ROTATION_DELETE,
            Outcome.SUCCESS,
            collection.name,
            version=gone.number,
            size=gone.size,
            detail=f"rotated out by v{number} ({collection.strategy.name})",
        )
        for gone in rotated
    )
    events.append(
        caller_event(
            ctx, Action.UPLOAD, Outcome.SUCCESS, collection.name, version=number, size=record.size
        )
    )
    return events


class _SignedStream:
    """The signature check of one upload: nothing when the collection has no trusted
    uploaders (a signature sent anyway is ignored); else gpg verifies the signature over
    the chunks, which a ChunkWorker writes to its stdin while the SHA-256 and the store
    work on the same chunks."""

    def __init__(
        self,
        service: SignatureService,
        collection: Collection,
        signature_of: Callable[[], bytes | None],
    ) -> None:
        self._service = service
        self._collection = collection
        self._signature_of = signature_of
        self._verification: StreamVerification | None = None
        self._worker: ChunkWorker | None = None
        self.signer: TrustedKey | None = None
        self.armored: str | None = None
        self._binary = b""

    async def start(self) -> None:
        """At the file's first bytes: the signature is known (a form's part came before)."""
        keys = self._collection.trusted_keys
        if not keys:
            return
        signature = self._signature_of()
        if signature is None:
            raise unsigned(self._collection.name)
        self._binary = signature
        self._verification = await asyncio.to_thread(self._service.start, keys, signature)
        self._worker = ChunkWorker(self._verification.write, name="upload-signature")

    async def submit(self, chunk: bytes) -> None:
        if self._worker is not None:
            await self._worker.submit(chunk)

    async def finish(self) -> None:
        if self._worker is None or self._verification is None:
            if self._collection.trusted_keys and self._verification is None:
                # An empty body is refused by the OpenPGP check before this.
                raise unsigned(self._collection.name)
            return
        await self._worker.finish()
        verification = self._verification
        self._verification = None
        found = await asyncio.to_thread(verification.finish)
        self.signer = decide(found, self._collection.trusted_keys, self._collection.name)
        self.armored = armor(self._binary)

    async def abort(self) -> None:
        if self._worker is not None:
            await self._worker.abort()
        if self._verification is not None:
            verification = self._verification
            self._verification = None
            await asyncio.to_thread(verification.abort)


def _content_length(header: str | None) -> int | None:
    """The Content-Length header's value; a malformed one or 0 is refused at once."""
    if header is None:
        return None
    if not _CONTENT_LENGTH.match(header):
        raise InvalidInput(INVALID_CONTENT_LENGTH)
    if (length := int(header)) == 0:
        raise InvalidInput(EMPTY_UPLOAD)
    return length


def _stored(version: VersionRecord) -> StoredVersion:
    return StoredVersion(
        number=version.number,
        size=version.size,
        created_at=version.created_at,
        protected=version.protected,
    )


async def _at_most(
    chunks: AsyncIterable[bytes], collection: Collection, quota: UploadLimit
) -> AsyncIterator[bytes]:
    """``chunks`` until more than the quota's bytes came: then PayloadTooLarge."""
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > quota.bytes:
            raise quota_exceeded(collection, quota, received, declared=False)
        yield chunk


def quota_exceeded(
    collection: Collection, quota: UploadLimit, size: int, *, declared: bool
) -> PayloadTooLarge:
    """The refusal of an upload over ``quota``: the reference phrase first, then the limit,
    the size (declared in Content-Length, or received so far) and the rule, and what to do."""
    so_far = f"Content-Length declares {size} bytes" if declared else f"{size} bytes so far"
    if quota.blocked_by_protection(size):
        return PayloadTooLarge(protected_quota_refusal(collection, quota, so_far))
    return PayloadTooLarge(
        f"{QUOTA_EXCEEDED}: {so_far}, but the next version of collection {collection.name} "
        f"may have at most {quota.bytes} bytes ({quota.explain()}); make the backup "
        f"smaller, or raise maxOneVersionSize or maxCollectionSize of the collection"
    )


def protected_quota_refusal(collection: Collection, quota: UploadLimit, so_far: str) -> str:
    """The refusal of an upload that only protected versions keep out (services/versions.py):
    the reference phrase first, then which limit they fill, and how to make room."""
    name = collection.name
    unprotect = (
        f"unprotect one (DELETE /api/stable/repository/collection/{name}/version/<number>"
        f"/protect, or backup-maker unprotect <number>)"
    )
    if quota.rule is QuotaRule.BACKUPS_COUNT:
        return (
            f"{QUOTA_EXCEEDED}: maxBackupsCount {quota.max_backups_count} of collection "
            f"{name} is reached by {quota.protected_versions} protected versions, which "
            f"rotation never removes; {unprotect} or raise maxBackupsCount"
        )
    return (
        f"{QUOTA_EXCEEDED}: {so_far}, but the next version of collection {name} may have at "
        f"most {quota.bytes} bytes ({quota.explain()}) because {quota.protected_versions} "
        f"protected versions ({quota.protected_bytes} bytes) are never rotated out; without "
        f"them it could have {quota.without_protection} bytes; {unprotect} or raise "
        f"maxCollectionSize"
    )


def extra_space_warning(collection: Collection, size: int) -> str | None:
    """What an uploader is told when its version is over ``maxOneVersionSize`` and was
    stored only by borrowing extra space (the collection health then fails); None if not."""
    limit = collection.max_one_version_size
    if size <= limit:
        return None
    return (
        f"the version has {size} bytes, over maxOneVersionSize ({limit} bytes): it was stored "
        f"in the collection's {QuotaRule.EXTRA_SPACE}, and the collection health reports it "
        f"until it is rotated out; make the backup smaller or raise maxOneVersionSize"
    )
