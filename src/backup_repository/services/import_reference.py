"""Registering the versions already in a reference deployment's bucket
(``backup-repository import-reference``, see docs/migration.md).

Per collection, under its upload lock (so that no server can upload to it meanwhile): list
the objects under ``<collection>/``, decide with :func:`domain.import_reference.plan_import` which
become which version, read each chosen object once to compute its SHA-256 and check that it
is an encrypted OpenPGP message (constant memory), record it with its original creation
time, and raise the collection's version counter above every number found in the bucket.
A dry run reads and decides the same way but takes no lock and writes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from backup_repository.domain.errors import InvalidInput
from backup_repository.domain.identity import Collection
from backup_repository.domain.import_reference import (
    Candidate,
    Finding,
    KnownVersion,
    ListedObject,
    Problem,
    ReferenceRow,
    plan_import,
)
from backup_repository.domain.openpgp import OpenPGPStreamChecker
from backup_repository.services.leases import renewed_upload_lock
from backup_repository.services.ports import LockLost, VersionRecord
from backup_repository.storage.base import BlobNotFound, BlobStore, StorageError
from backup_repository.streams import ChunkWorker

logger = logging.getLogger(__name__)

DEFAULT_LOCK_LEASE = 30.0


class UploadLock(Protocol):
    """The collection's upload lock, as :class:`~services.ports.VersionRepository` holds it."""

    async def try_lock(self, collection_id: str, owner: str, lease_seconds: float) -> int | None:
        """The last version number given, or None when someone else holds the lock."""

    async def renew_lock(self, collection_id: str, owner: str, lease_seconds: float) -> bool: ...

    async def release_lock(self, collection_id: str, owner: str) -> None: ...


class ImportRepository(Protocol):
    async def known_versions(self, collection_id: str) -> list[KnownVersion]:
        """Every version registered in the collection, rotated ones included."""

    async def last_version_number(self, collection_id: str) -> int: ...

    async def register(self, version: VersionRecord, owner: str) -> None:
        """Record the version and raise the counter to its number, in one transaction,
        while ``owner`` holds the collection's upload lock; raises LockLost otherwise."""

    async def raise_counter(self, collection_id: str, number: int, owner: str) -> int:
        """Raise the counter to at least ``number`` under ``owner``'s lock; returns it."""


class ReferenceVersions(Protocol):
    async def versions(self, collection_id: str) -> list[ReferenceRow]:
        """The reference database's live (not soft-deleted) rows of a collection."""


class NoVersions:
    """An empty database: what a dry run sees before the database was ever created (it
    must not create it)."""

    async def known_versions(self, collection_id: str) -> list[KnownVersion]:
        return []

    async def last_version_number(self, collection_id: str) -> int:
        return 0

    async def register(self, version: VersionRecord, owner: str) -> None:
        raise RuntimeError("a dry run registers nothing")

    async def raise_counter(self, collection_id: str, number: int, owner: str) -> int:
        raise RuntimeError("a dry run registers nothing")


@dataclass(frozen=True)
class Registered:
    number: int
    key: str
    size: int
    sha256: str
    created_at: datetime
    openpgp: bool = True


@dataclass
class CollectionReport:
    collection: str
    dry_run: bool
    registered: list[Registered] = field(default_factory=list)
    already_registered: int = 0
    findings: list[Finding] = field(default_factory=list)
    counter_before: int = 0
    counter_after: int = 0
    # Set when the collection could not be imported at all (locked, storage down).
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error and not self.findings

    def count(self, problem: Problem) -> int:
        return sum(1 for f in self.findings if f.problem is problem)


@dataclass(frozen=True)
class _Inspected:
    size: int
    sha256: str
    openpgp_error: str


class ImportService:
    def __init__(
        self,
        versions: UploadLock,
        records: ImportRepository,
        store: BlobStore,
        *,
        reference: ReferenceVersions | None = None,
        io_timeout: float = 7200.0,
        lock_lease: float = DEFAULT_LOCK_LEASE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._versions = versions
        self._records = records
        self._store = store
        self._reference = reference
        self._io_timeout = io_timeout
        self._lock_lease = lock_lease
        self._clock = clock

    async def import_collection(
        self, collection: Collection, *, dry_run: bool = False, allow_non_openpgp: bool = False
    ) -> CollectionReport:
        report = CollectionReport(collection.name, dry_run)
        if dry_run:
            report.counter_before = await self._records.last_version_number(collection.name)
            await self._run(collection, report, None, allow_non_openpgp)
            return report

        owner = f"import-reference:{secrets.token_hex(8)}"
        last = await self._versions.try_lock(collection.name, owner, self._lock_lease)
        if last is None:
            report.error = (
                "an upload to this collection is in progress (its upload lock is held); "
                "stop the servers using this database, or try again later"
            )
            return report
        report.counter_before = last

        try:
            # The import is not stopped when the lock is lost: its next write under the
            # lock finds out and raises LockLost.
            async with renewed_upload_lock(
                self._versions, collection.name, owner, self._lock_lease, stop_on_loss=False
            ):
                await self._run(collection, report, owner, allow_non_openpgp)
        except LockLost:
            report.error = "the upload lock was lost during the import; run it again"
        return report

    async def _run(
        self,
        collection: Collection,
        report: CollectionReport,
        owner: str | None,
        allow_non_openpgp: bool,
    ) -> None:
        try:
            objects = [
                ListedObject(info.key, info.size, info.last_modified)
                async for info in self._store.list(f"{collection.name}/")
            ]
        except StorageError as exc:
            report.error = f"cannot list the storage: {exc}"
            return
        reference = None
        if self._reference is not None:
            reference = await self._reference.versions(collection.name)
        known = await self._records.known_versions(collection.name)
        plan = plan_import(collection.name, collection.filename_template, objects, known, reference)
        report.already_registered = len(plan.already_registered)
        report.findings.extend(plan.findings)
        for candidate in plan.candidates:
            found = await self._inspect(candidate, report)
            if found is None:
                continue
            if found.openpgp_error and not allow_non_openpgp:
                report.findings.append(
                    Finding(candidate.key, Problem.NOT_OPENPGP, found.openpgp_error)
                )
                continue
            record = self._record(collection, candidate, found)
            if owner is not None:
                await self._records.register(record, owner)
            report.registered.append(
                Registered(
                    candidate.number,
                    candidate.key,
                    found.size,
                    found.sha256,
                    record.created_at,
                    openpgp=not found.openpgp_error,
                )
            )
        highest = max(plan.highest_number, report.counter_before)
        if owner is not None:
            report.counter_after = await self._records.raise_counter(
                collection.name, highest, owner
            )
        else:
            report.counter_after = highest
        sizes = [k.size for k in known if not k.deleted] + [r.size for r in report.registered]
        if len(sizes) > collection.max_backups_count:
            report.notes.append(
                f"{len(sizes)} versions, more than maxBackupsCount "
                f"({collection.max_backups_count}): the next upload rotates the oldest out"
            )
        over = sum(1 for size in sizes if size > collection.max_one_version_size)
        if over:
            report.notes.append(
                f"{over} version(s) larger than maxOneVersionSize "
                f"({collection.max_one_version_size} bytes): the collection's health check "
                f"VersionsSizeValidator fails while they are kept"
            )
        if sum(sizes) > collection.max_collection_size:
            report.notes.append(
                f"the versions use {sum(sizes)} bytes, more than maxCollectionSize "
                f"({collection.max_collection_size} bytes): uploads may be refused as over "
                f"quota until rotation removes enough of them"
            )

    async def _inspect(self, candidate: Candidate, report: CollectionReport) -> _Inspected | None:
        """Read the object once: size, SHA-256 and the OpenPGP check. None (and a finding
        in the report) when it cannot be read or changed meanwhile."""
        digest = hashlib.sha256()
        checker = OpenPGPStreamChecker()
        openpgp_error = ""
        size = 0
        hasher = ChunkWorker(digest.update, name="import-sha256")
        try:
            async with asyncio.timeout(self._io_timeout):
                async for chunk in self._store.read(candidate.key):
                    size += len(chunk)
                    await hasher.submit(chunk)
                    if not openpgp_error:
                        try:
                            checker.feed(chunk)
                        except InvalidInput as exc:
                            openpgp_error = exc.message
            await hasher.finish()
        except BaseException as exc:
            await hasher.abort()
            if isinstance(exc, BlobNotFound):
                report.findings.append(
                    Finding(candidate.key, Problem.MISSING, "the object disappeared")
                )
                return None
            if isinstance(exc, StorageError | TimeoutError):
                report.findings.append(
                    Finding(candidate.key, Problem.UNREADABLE, f"cannot read it: {exc}")
                )
                return None
            raise
        if not openpgp_error:
            try:
                checker.finish()
            except InvalidInput as exc:
                openpgp_error = exc.message
        if size != candidate.size:
            report.findings.append(
                Finding(
                    candidate.key,
                    Problem.CONFLICT,
                    f"the object changed while being read ({candidate.size} bytes listed, "
                    f"{size} read)",
                )
            )
            return None
        return _Inspected(size, digest.hexdigest(), openpgp_error)

    def _record(
        self, collection: Collection, candidate: Candidate, found: _Inspected
    ) -> VersionRecord:
        created = candidate.created_at or candidate.last_modified or self._clock()
        return VersionRecord(
            id=str(uuid.uuid4()),
            collection_id=collection.name,
            number=candidate.number,
            filename=candidate.filename,
            storage_key=candidate.key,
            size=found.size,
            sha256=found.sha256,
            session_id=candidate.session_id[:64],
            user=candidate.uploader[:255],
            created_at=created,
            updated_at=candidate.updated_at or created,
        )
