"""What a collection manager does to one version (docs/collections.md, "Protected versions"
and "Deleting a version"): protect it from rotation, unprotect it, delete it.

Each takes the collection's upload lock (the lease an upload holds, services/leases.py)
for the moment it changes the row, so it never interleaves with an upload's plan and
commit: an upload either saw the version protected (and left it alone) or not, and a
version is never deleted under an upload that counted it. A deletion marks the row deleted
in one transaction that checks the lock is still ours, then deletes the object and marks it
purged, as rotation does; an interrupted deletion leaves a row deleted but not purged,
which the next clean-up under the lock purges (services/upload_cleanup.py). Numbers are
never reused: the counter in ``collection_states`` never goes back, so the next upload
after deleting the newest version still gets the next number.

Uploaders and downloaders may do none of this (``collectionManager`` is needed,
domain/authz.py); every attempt is audited, refused ones too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Final

from backup_repository.domain.authz import CollectionAction
from backup_repository.domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
)
from backup_repository.domain.identity import Collection
from backup_repository.domain.versions import VERSION_NOT_FOUND, parse_version_ref
from backup_repository.services.auth import AuthContext
from backup_repository.services.collections import CollectionService, caller_event
from backup_repository.services.events import Action, EventSink, NullSink, Outcome
from backup_repository.services.leases import renewed_upload_lock
from backup_repository.services.ports import LockLost, VersionRecord, VersionRepository
from backup_repository.services.upload_cleanup import UploadCleanup

logger = logging.getLogger(__name__)

NOT_AUTHORIZED_PROTECT: Final = (
    "not authorized to protect or unprotect versions of this collection: it takes the "
    "collectionManager role on the collection (in its accessControl, or as a user role), or "
    "systemAdmin; ask an administrator for it"
)
NOT_AUTHORIZED_DELETE: Final = (
    "not authorized to delete versions of this collection: only a collectionManager of the "
    "collection (in its accessControl, or as a user role) or a systemAdmin may; uploaders "
    "and downloaders never can"
)
MAX_REASON: Final = 500
# What runs under the lock, given the lock's owner: the version, and whether it changed.
_Work = Callable[[str], Awaitable[tuple[VersionRecord, bool]]]
REASON_REQUIRED: Final = (
    "give the reason for the deletion as the query parameter reason (at most "
    f"{MAX_REASON} characters): it is kept in the audit log"
)


def protect_path(collection: str, number: int) -> str:
    """The API path that protects (POST) or unprotects (DELETE) a version."""
    return f"/api/stable/repository/collection/{collection}/version/{number}/protect"


def busy(collection: str) -> str:
    return (
        f"an upload to collection {collection} is running (cannot upload to same collection "
        "in parallel), and versions change only between uploads; try again once it has "
        "finished"
    )


def protected_refusal(collection: str, number: int) -> str:
    return (
        f"version {number} of collection {collection} is protected and cannot be deleted; "
        f"unprotect it first (DELETE {protect_path(collection, number)}, or backup-maker "
        f"unprotect {number}), then delete it"
    )


def _reason_code(exc: BaseException) -> str:
    """The ``reason`` of a refused attempt's event."""
    if isinstance(exc, Forbidden):
        return "auth"
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, InvalidInput):
        return "invalid"
    if isinstance(exc, Conflict):
        return "protected" if "is protected" in exc.message else "lock"
    return "storage"


class VersionService:
    def __init__(
        self,
        collections: CollectionService,
        versions: VersionRepository,
        cleanup: UploadCleanup,
        lock_lease: float,
        instance: str,
        events: EventSink | None = None,
    ) -> None:
        self._collections = collections
        self._versions = versions
        self._cleanup = cleanup
        self._lock_lease = lock_lease
        self._instance = instance
        self._events: EventSink = events or NullSink()

    async def protect(
        self, ctx: AuthContext, collection_id: str, ref: str, protected: bool = True
    ) -> VersionRecord:
        """Protect the version ``ref`` (``7``, ``v7``, ``latest``) from rotation, or, with
        ``protected`` False, unprotect it. Protecting a protected version (or unprotecting an
        unprotected one) changes nothing and succeeds."""
        action = Action.VERSION_PROTECT if protected else Action.VERSION_UNPROTECT
        try:
            collection = self._collections.authorized(
                ctx, collection_id, CollectionAction.PROTECT_VERSION, NOT_AUTHORIZED_PROTECT
            )
            number = parse_version_ref(ref)

            async def change(owner: str) -> tuple[VersionRecord, bool]:
                version = await self._find(collection, number)
                if version.protected == protected:
                    return version, False
                if not await self._versions.set_protected(version.id, owner, protected):
                    raise NotFound(VERSION_NOT_FOUND)
                return replace(version, protected=protected), True

            version, changed = await self._locked(collection, change)
        except DomainError as exc:
            await self._refused(ctx, action, collection_id, ref, exc)
            raise
        state = "protected" if protected else "unprotected"
        await self._events.emit(
            caller_event(
                ctx,
                action,
                Outcome.SUCCESS,
                collection.name,
                version=version.number,
                size=version.size,
                detail=f"v{version.number} {state}"
                if changed
                else f"v{version.number} was already {state}",
            )
        )
        return version

    async def delete(
        self, ctx: AuthContext, collection_id: str, ref: str, reason: str | None
    ) -> VersionRecord:
        """Delete the version ``ref``: its row is marked deleted, then its object goes.
        A protected version is refused (Conflict) until it is unprotected."""
        try:
            collection = self._collections.authorized(
                ctx, collection_id, CollectionAction.DELETE_VERSION, NOT_AUTHORIZED_DELETE
            )
            why = _reason(reason)
            number = parse_version_ref(ref)

            async def remove(owner: str) -> tuple[VersionRecord, bool]:
                version = await self._find(collection, number)
                if version.protected:
                    raise Conflict(protected_refusal(collection.name, version.number))
                deleted_at = await self._versions.delete_version(version.id, owner)
                if deleted_at is None:
                    # Protected or deleted meanwhile, which the lock rules out.
                    raise NotFound(VERSION_NOT_FOUND)
                version = replace(version, deleted_at=deleted_at, updated_at=deleted_at)
                try:
                    await self._cleanup.purge([version])
                except Exception:
                    # Recorded as deleted: the next clean-up under the lock purges it.
                    logger.exception("could not purge deleted %s", version.storage_key)
                return version, True

            version, _ = await self._locked(collection, remove)
        except DomainError as exc:
            await self._refused(ctx, Action.VERSION_DELETE, collection_id, ref, exc)
            raise
        await self._events.emit(
            caller_event(
                ctx,
                Action.VERSION_DELETE,
                Outcome.SUCCESS,
                collection.name,
                version=version.number,
                size=version.size,
                detail=f"v{version.number} deleted; reason: {why}",
            )
        )
        logger.info(
            "deleted %s v%d (%d bytes) for %s",
            collection.name,
            version.number,
            version.size,
            ctx.user.name,
        )
        return version

    async def _find(self, collection: Collection, number: int | None) -> VersionRecord:
        if number is None:
            found = await self._versions.latest_version(collection.name)
        else:
            found = await self._versions.get_version(collection.name, number)
        if found is None:
            raise NotFound(VERSION_NOT_FOUND)
        return found

    async def _locked(self, collection: Collection, work: _Work) -> tuple[VersionRecord, bool]:
        """``work(owner)`` while holding the collection's upload lock as ``owner``."""
        owner = f"{self._instance}:{uuid.uuid4().hex[:16]}"
        await self._cleanup.wait_for(collection)
        if await self._versions.try_lock(collection.name, owner, self._lock_lease) is None:
            raise Conflict(busy(collection.name))
        try:
            async with renewed_upload_lock(
                self._versions, collection.name, owner, self._lock_lease
            ):
                return await work(owner)
        except LockLost as exc:
            raise Conflict(busy(collection.name)) from exc

    async def _refused(
        self, ctx: AuthContext, action: Action, collection_id: str, ref: str, exc: DomainError
    ) -> None:
        number: int | None
        try:
            number = parse_version_ref(ref)
        except NotFound:
            number = None
        await self._events.emit(
            caller_event(
                ctx,
                action,
                Outcome.FAILURE,
                collection_id,
                version=number,
                reason=_reason_code(exc),
                detail=exc.message,
            )
        )


def _reason(reason: str | None) -> str:
    text = " ".join((reason or "").split())
    if not text or len(text) > MAX_REASON:
        raise InvalidInput(REASON_REQUIRED)
    return text
