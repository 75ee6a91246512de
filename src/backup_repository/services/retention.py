"""The retention dry run (docs/collections.md, "The retention dry run"): what the
collection's rotation strategy keeps of the live versions now, and what it would keep and
rotate out after one more upload made now, with the limit of that upload.

It asks the same pure functions the upload pipeline asks (``domain.rotation.decide`` and
``domain.quota.next_upload``) with the same clock, so what it shows for the next upload is
what an upload made now does. Nothing is changed: versions go only when an upload commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from backup_repository.domain.authz import CollectionAction
from backup_repository.domain.identity import Collection
from backup_repository.domain.quota import UploadLimit, next_upload
from backup_repository.domain.rotation import Decision, decide
from backup_repository.domain.versions import StoredVersion
from backup_repository.services.auth import AuthContext
from backup_repository.services.collections import CollectionService
from backup_repository.services.ports import VersionRepository

NOT_AUTHORIZED_RETENTION = (
    "not authorized to see the retention of this collection: it takes the "
    "collectionManager role on the collection (in its accessControl, or as a user role), "
    "or systemAdmin; ask an administrator for it"
)


@dataclass(frozen=True)
class RetentionView:
    """The strategy's decisions about a set of versions, newest first."""

    decisions: list[Decision]

    @property
    def bytes_kept(self) -> int:
        return sum(d.version.size for d in self.decisions if d.kept)

    @property
    def bytes_freed(self) -> int:
        return sum(d.version.size for d in self.decisions if not d.kept)

    @property
    def versions_kept(self) -> int:
        return sum(1 for d in self.decisions if d.kept)

    @property
    def versions_rotated(self) -> int:
        return sum(1 for d in self.decisions if not d.kept)


@dataclass(frozen=True)
class RetentionReport:
    """``current``: the live versions as the strategy sees them now. ``after_upload``: the
    live versions and ``upcoming`` (a version uploaded now, of size 0: the strategy never
    looks at sizes), and ``limit``, how large that upload may be once the versions it
    rotates out are gone."""

    collection: Collection
    now: datetime
    current: RetentionView
    after_upload: RetentionView
    upcoming: StoredVersion
    limit: UploadLimit


class RetentionService:
    def __init__(
        self,
        collections: CollectionService,
        versions: VersionRepository,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._collections = collections
        self._versions = versions
        self._clock = clock

    async def report(self, ctx: AuthContext, collection_id: str) -> RetentionReport:
        """The dry run for a collectionManager of the collection (or a systemAdmin)."""
        collection = self._collections.authorized(
            ctx, collection_id, CollectionAction.VIEW_RETENTION, NOT_AUTHORIZED_RETENTION
        )
        live = [
            StoredVersion(
                number=v.number, size=v.size, created_at=v.created_at, protected=v.protected
            )
            for v in await self._versions.live_versions(collection.name)
        ]
        return retention_report(collection, live, self._clock())


def retention_report(
    collection: Collection, live: Sequence[StoredVersion], now: datetime
) -> RetentionReport:
    """The report of :meth:`RetentionService.report` for the given live versions."""
    upcoming = StoredVersion(
        number=max((v.number for v in live), default=0) + 1, size=0, created_at=now
    )
    return RetentionReport(
        collection=collection,
        now=now,
        current=RetentionView(decide(collection, live)),
        after_upload=RetentionView(decide(collection, [*live, upcoming])),
        upcoming=upcoming,
        limit=next_upload(collection, live, now).limit,
    )
