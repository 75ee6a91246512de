"""What interrupted uploads leave behind, and the locks of a previous life of this replica.

An upload cleans its collection under the lock before it stores anything
(:meth:`UploadCleanup.clean_leftovers`); at start-up the server frees the upload locks its
previous life held and cleans every collection whose lock is free, in the background
(:meth:`UploadCleanup.clean_all`; an upload arriving meanwhile waits for its collection,
:meth:`UploadCleanup.wait_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from backup_repository.domain.errors import DependencyUnavailable
from backup_repository.domain.identity import Collection
from backup_repository.services.collections import STORAGE_UNAVAILABLE
from backup_repository.services.ports import (
    ConfigurationProvider,
    VersionRecord,
    VersionRepository,
)
from backup_repository.storage.base import BlobStore, StorageError

logger = logging.getLogger(__name__)


class UploadCleanup:
    def __init__(
        self,
        config: ConfigurationProvider,
        versions: VersionRepository,
        store: BlobStore,
        lock_lease: float,
        instance: str,
    ) -> None:
        self._config = config
        self._versions = versions
        self._store = store
        self._lock_lease = lock_lease
        self._instance = instance
        # Collections the start-up clean-up of this process holds the lock of right now.
        self._cleaning: dict[str, asyncio.Event] = {}
        # By collection: rotated versions whose objects this process deleted after an
        # upload's commit and has not marked purged yet. The next upload's lock step marks
        # them (one trip to the database fewer per rotating upload). Lost with the
        # process: their rows then stay unpurged, and the next clean-up deletes their
        # (missing) objects again and marks them.
        self._unmarked: dict[str, list[str]] = {}

    async def wait_for(self, collection: Collection) -> None:
        """This process's start-up clean-up holds the collection's lock for a moment: an
        upload right after a restart waits for it (at most a lease) instead of being
        refused."""
        cleaning = self._cleaning.get(collection.name)
        if cleaning is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cleaning.wait(), self._lock_lease)

    async def purge(self, versions: Sequence[VersionRecord], *, mark_later: bool = False) -> None:
        """Delete the objects of rotated versions (already marked deleted), then mark them
        purged, or with ``mark_later`` leave that to the next upload's lock step
        (:meth:`take_unmarked`). A failure leaves them for the next upload's clean-up."""
        purged: list[str] = []
        for version in versions:
            try:
                await self._store.delete(version.storage_key)
                purged.append(version.id)
            except StorageError as exc:
                logger.warning("could not delete rotated %s: %s", version.storage_key, exc)
        if mark_later:
            for version in versions:
                if version.id in purged:
                    self._unmarked.setdefault(version.collection_id, []).append(version.id)
            return
        await self._versions.mark_purged(purged)

    def take_unmarked(self, collection_id: str) -> list[str]:
        """The versions of ``collection_id`` whose objects are gone and whose rows are not
        marked purged yet, for the lock step to mark; given back with
        :meth:`unmarked_again` when that did not happen."""
        return self._unmarked.pop(collection_id, [])

    def unmarked_again(self, collection_id: str, version_ids: Sequence[str]) -> None:
        if version_ids:
            self._unmarked.setdefault(collection_id, []).extend(version_ids)

    async def delete_quietly(self, key: str) -> None:
        try:
            await self._store.delete(key)
        except Exception:
            logger.exception("could not delete unrecorded object %s", key)

    async def clean_leftovers(
        self,
        collection: Collection,
        last_number: int,
        unpurged: Sequence[VersionRecord] | None = None,
    ) -> None:
        """With the collection's lock held nothing else writes to it, so whatever an
        interrupted upload or rotation left behind can go: staging data, an object stored
        but never recorded (the next number), and objects of rotated versions
        (``unpurged``, as read when the lock was taken; read here when None)."""
        unrecorded = f"{collection.name}/{collection.filename_for(last_number + 1)}"
        try:
            # One call (file://: one trip to a worker thread) for both.
            await self._store.remove_leftovers(f"{collection.name}/", [unrecorded])
            if unpurged is None:
                unpurged = await self._versions.deleted_unpurged(collection.name)
            if unpurged:
                await self.purge(unpurged)
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
                        await self.clean_leftovers(collection, last)
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

    async def _release(self, collection_id: str, owner: str) -> None:
        try:
            await self._versions.release_lock(collection_id, owner)
        except Exception:
            # The lease runs out by itself; log and go on.
            logger.exception("could not release the upload lock of %s", collection_id)
