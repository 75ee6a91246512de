"""Collections as callers see them: finding one by name, deciding whether a caller may act
on it, listing collections and versions with their usage. Uploads, downloads and the
collection health report (services/uploads.py, downloads.py, collection_health.py) find
and authorize collections here, and describe what a caller did with :func:`caller_event`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from backup_repository.domain import authz
from backup_repository.domain.authz import CollectionAction
from backup_repository.domain.errors import Forbidden, NotFound
from backup_repository.domain.identity import Collection
from backup_repository.domain.windows import WindowState, window_state
from backup_repository.services.auth import AuthContext
from backup_repository.services.events import Action, Event, Outcome, short_session
from backup_repository.services.ports import (
    ConfigurationProvider,
    VersionRecord,
    VersionRepository,
)

COLLECTION_NOT_FOUND = "cannot find specified collection"
NOT_AUTHORIZED_UPLOAD = "not authorized to upload versions to this collection"
NOT_AUTHORIZED_DOWNLOAD = "not authorized to download versions from this collection"
NOT_AUTHORIZED_LIST = "not authorized to list versions"
STORAGE_UNAVAILABLE = "storage is unavailable, try again later"


@dataclass(frozen=True)
class Usage:
    versions: int
    bytes_used: int
    max_backups_count: int
    max_one_version_size: int
    max_collection_size: int


@dataclass(frozen=True)
class UploadWindow:
    """The collection's backup windows now, for one caller: ``anytime`` when it may upload
    outside them (``uploadsAnytime``)."""

    state: WindowState
    anytime: bool

    @property
    def upload_allowed(self) -> bool:
        return self.state.open or self.anytime


def caller_event(
    ctx: AuthContext, action: Action, outcome: Outcome, collection_id: str, **details: object
) -> Event:
    """An event of ``ctx``'s caller acting on a collection."""
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


class CollectionService:
    def __init__(
        self,
        config: ConfigurationProvider,
        versions: VersionRepository,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._versions = versions
        self._clock = clock

    def collection(self, collection_id: str) -> Collection:
        found = self._config.snapshot().collections.get(collection_id)
        if found is None:
            raise NotFound(COLLECTION_NOT_FOUND)
        return found

    def authorized(
        self, ctx: AuthContext, collection_id: str, action: CollectionAction, message: str
    ) -> Collection:
        """The collection, if ``ctx`` may do ``action`` on it; Forbidden(``message``) if
        not, NotFound if there is no such collection."""
        collection = self.collection(collection_id)
        if not authz.may_act_on_collection(ctx.principal, collection, action):
            raise Forbidden(message)
        return collection

    async def list_versions(
        self, ctx: AuthContext, collection_id: str
    ) -> tuple[Collection, list[VersionRecord], Usage, UploadWindow]:
        """The collection's live versions, newest first, its usage, and its backup windows
        now for this caller (so that an uploader can check before it makes a backup)."""
        collection = self.authorized(
            ctx, collection_id, CollectionAction.LIST_VERSIONS, NOT_AUTHORIZED_LIST
        )
        live = await self._versions.live_versions(collection.name)
        usage = _usage(collection, len(live), sum(v.size for v in live))
        window = UploadWindow(
            state=window_state(collection.windows, self._clock()),
            anytime=authz.may_act_on_collection(
                ctx.principal, collection, CollectionAction.UPLOAD_OUTSIDE_WINDOW
            ),
        )
        return collection, list(reversed(live)), usage, window

    async def list_collections(self, ctx: AuthContext) -> list[tuple[Collection, Usage]]:
        """The collections ``ctx`` may list, upload to or download from, by name."""
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
        return [(c, _usage(c, *usage.get(c.name, (0, 0)))) for c in visible]


def _usage(collection: Collection, versions: int, bytes_used: int) -> Usage:
    return Usage(
        versions,
        bytes_used,
        collection.max_backups_count,
        collection.max_one_version_size,
        collection.max_collection_size,
    )
