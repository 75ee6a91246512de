"""Figures about every configured collection and the configuration itself, read when the
metrics are scraped (``http/metrics.py``): live versions and bytes, the limits, and when
the last upload was recorded, and the room the quota leaves for the next version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from backup_repository.domain.identity import Collection
from backup_repository.domain.quota import next_upload
from backup_repository.domain.versions import StoredVersion
from backup_repository.services.ports import ConfigurationProvider, VersionRepository


@dataclass(frozen=True)
class CollectionStats:
    name: str
    versions: int  # live versions (not rotated out)
    bytes: int  # bytes the live versions use
    max_versions: int  # maxBackupsCount
    max_bytes: int  # maxCollectionSize
    last_upload_at: datetime | None  # None: nothing was ever uploaded
    next_version_room: int  # the largest next upload the quota allows now, in bytes


@dataclass(frozen=True)
class ConfigStats:
    problems: int  # objects left out because they are broken
    usable: bool  # False when the source itself cannot be read


class StatsService:
    def __init__(
        self,
        config: ConfigurationProvider,
        versions: VersionRepository,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._versions = versions
        self._clock = clock

    async def collections(self) -> list[CollectionStats]:
        """One entry per configured collection, by name; collections that exist only in the
        database (removed from the configuration) are left out."""
        collections = self._config.snapshot().collections
        usage = await self._versions.usage()
        last = await self._versions.last_uploads()
        stats: list[CollectionStats] = []
        for name in sorted(collections):
            collection = collections[name]
            count, used = usage.get(name, (0, 0))
            stats.append(
                CollectionStats(
                    name=name,
                    versions=count,
                    bytes=used,
                    max_versions=collection.max_backups_count,
                    max_bytes=collection.max_collection_size,
                    last_upload_at=last.get(name),
                    next_version_room=await self._next_version_room(collection),
                )
            )
        return stats

    async def _next_version_room(self, collection: Collection) -> int:
        """What an upload now may have: the quota once the rotation it causes is done, as
        the upload itself computes it (services/uploads.py)."""
        live = [
            StoredVersion(
                number=v.number, size=v.size, created_at=v.created_at, protected=v.protected
            )
            for v in await self._versions.live_versions(collection.name)
        ]
        return next_upload(collection, live, self._clock()).limit.bytes

    def configuration(self) -> ConfigStats:
        snapshot = self._config.snapshot()
        return ConfigStats(problems=len(snapshot.problems), usable=snapshot.usable)

    def is_configured(self, collection_id: str) -> bool:
        return collection_id in self._config.snapshot().collections
