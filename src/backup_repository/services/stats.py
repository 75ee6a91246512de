"""Figures about every configured collection and the configuration itself, read when the
metrics are scraped (``http/metrics.py``): live versions and bytes, the limits, and when
the last upload was recorded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from backup_repository.services.ports import ConfigurationProvider, VersionRepository


@dataclass(frozen=True)
class CollectionStats:
    name: str
    versions: int  # live versions (not rotated out)
    bytes: int  # bytes the live versions use
    max_versions: int  # maxBackupsCount
    max_bytes: int  # maxCollectionSize
    last_upload_at: datetime | None  # None: nothing was ever uploaded


@dataclass(frozen=True)
class ConfigStats:
    problems: int  # objects left out because they are broken
    usable: bool  # False when the source itself cannot be read


class StatsService:
    def __init__(self, config: ConfigurationProvider, versions: VersionRepository) -> None:
        self._config = config
        self._versions = versions

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
                )
            )
        return stats

    def configuration(self) -> ConfigStats:
        snapshot = self._config.snapshot()
        return ConfigStats(problems=len(snapshot.problems), usable=snapshot.usable)

    def is_configured(self, collection_id: str) -> bool:
        return collection_id in self._config.snapshot().collections
