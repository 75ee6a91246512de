"""Integrity scrubbing: re-read every live version's stored object, recompute its size and
SHA-256, compare them with what was recorded at upload, and keep the result
(``backup-repository verify``, or on a schedule with ``--verify-interval``).

Results feed the ``VersionsIntegrityValidator`` of the collection health report and the
corrupt-versions gauge (:meth:`IntegrityService.corrupt_counts`). A version that is not ok
emits an event (``Action.VERIFY``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from backup_repository.domain import integrity
from backup_repository.domain.identity import Collection
from backup_repository.domain.integrity import CheckStatus, LatestCheck, Tally, Verdict
from backup_repository.domain.units import format_duration
from backup_repository.services.events import Action, Event, EventSink, NullSink, Outcome
from backup_repository.services.health import CheckResult
from backup_repository.services.leases import repeat_forever, run_on_schedule
from backup_repository.services.ports import (
    IntegrityRepository,
    LeaseRepository,
    VersionCheck,
    VersionRecord,
    VersionRepository,
)
from backup_repository.storage.base import BlobNotFound, BlobStore, StorageError
from backup_repository.streams import ChunkWorker

logger = logging.getLogger(__name__)

# The lease that lets one replica at a time run the scheduled check.
LEASE_NAME: Final = "integrity-verify"
# How long a check in progress holds the lease without renewing it (it renews every third),
# so the check of a replica that died is taken over within this time.
DEFAULT_LEASE_SECONDS: Final = 60.0
# Replicas look at the lease at least this often, so one takes over soon after the replica
# that ran the last check is gone.
MAX_POLL_SECONDS: Final = 60.0


@dataclass(frozen=True)
class VerifyReport:
    """What one pass found. ``checks`` holds a result for every version checked; versions
    rotated away while the pass ran are counted in ``skipped`` only."""

    checks: tuple[VersionCheck, ...]
    skipped: int
    bytes_read: int
    started_at: datetime
    finished_at: datetime
    collections: tuple[str, ...] = field(default=())

    @property
    def tally(self) -> Tally:
        counts = Counter(CheckStatus(c.status) for c in self.checks)
        return Tally(
            versions=len(self.checks),
            collections=len({c.collection_id for c in self.checks}),
            bytes_read=self.bytes_read,
            counts=counts,
        )

    @property
    def problems(self) -> list[VersionCheck]:
        return [c for c in self.checks if c.status != CheckStatus.OK]

    @property
    def all_ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return self.tally.summary()


@dataclass(frozen=True)
class _Examined:
    verdict: Verdict
    actual_size: int | None = None
    actual_sha256: str | None = None
    bytes_read: int = 0


class VersionsIntegrityValidator:
    """The collection health check over the latest verification of each live version."""

    name = "VersionsIntegrityValidator"

    def __init__(self, results: IntegrityRepository) -> None:
        self._results = results

    async def run(self, collection: Collection, live: Sequence[VersionRecord]) -> CheckResult:
        ids = {v.id for v in live}
        latest = [
            LatestCheck(c.number, CheckStatus(c.status), c.detail, c.checked_at)
            for c in await self._results.results(collection.name)
            if c.version_id in ids
        ]
        verdict = integrity.integrity_health([v.number for v in live], latest)
        return CheckResult(self.name, verdict.ok, verdict.message, verdict.problems)


class IntegrityService:
    def __init__(
        self,
        versions: VersionRepository,
        store: BlobStore,
        results: IntegrityRepository,
        io_timeout: float,
        events: EventSink | None = None,
        leases: LeaseRepository | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        instance: str | None = None,
    ) -> None:
        self._versions = versions
        self._store = store
        self._results = results
        self._io_timeout = io_timeout
        self._events: EventSink = events or NullSink()
        self._leases = leases
        self._lease_seconds = lease_seconds
        self._clock = clock
        # Names this process in the lease table: ``<replica tag>/<life>``
        # (domain/replica.py) from the composition root.
        self._instance = instance or secrets.token_hex(8)
        self.health_check = VersionsIntegrityValidator(results)

    # -- one pass ------------------------------------------------------------------------

    async def verify(
        self, collection_id: str | None = None, *, collections: Sequence[str] | None = None
    ) -> VerifyReport:
        """Check every live version (of ``collection_id``, or of ``collections``; default:
        all), one after the other, and record each result. Storage failures are results
        (``unreadable``); a database failure ends the pass with the error."""
        wanted: list[str] | None = None
        if collection_id is not None:
            wanted = [collection_id]
        if collections is not None:
            wanted = [*(wanted or []), *collections]
        started = self._clock()
        versions = await self._results.live_versions(wanted)
        checks: list[VersionCheck] = []
        skipped = 0
        bytes_read = 0
        for version in versions:
            examined = await self._examine(version)
            bytes_read += examined.bytes_read
            check = await self._record(version, examined)
            if check is None:
                skipped += 1
            else:
                checks.append(check)
        report = VerifyReport(
            checks=tuple(checks),
            skipped=skipped,
            bytes_read=bytes_read,
            started_at=started,
            finished_at=self._clock(),
            collections=tuple(sorted({v.collection_id for v in versions})),
        )
        took = format_duration(report.finished_at - report.started_at)
        level = logging.INFO if report.all_ok else logging.WARNING
        logger.log(
            level,
            "integrity check: %s in %s",
            report.summary(),
            took,
            extra={
                "started_at": report.started_at.isoformat(),
                "finished_at": report.finished_at.isoformat(),
            },
        )
        return report

    async def check_version(self, version: VersionRecord) -> VersionCheck | None:
        """Check one version and record the result; None when it was rotated away while
        being checked (then nothing is recorded)."""
        return await self._record(version, await self._examine(version))

    async def _record(self, version: VersionRecord, examined: _Examined) -> VersionCheck | None:
        verdict = examined.verdict
        if verdict.status is not CheckStatus.OK and not await self._still_live(version):
            logger.info(
                "%s v%d was rotated away while being checked; skipped",
                version.collection_id,
                version.number,
            )
            return None
        check = VersionCheck(
            version_id=version.id,
            collection_id=version.collection_id,
            number=version.number,
            checked_at=self._clock(),
            status=verdict.status.value,
            detail=verdict.detail,
            actual_size=examined.actual_size,
            actual_sha256=examined.actual_sha256,
        )
        await self._results.record_result(check)
        if verdict.status is not CheckStatus.OK:
            logger.warning(
                "%s v%d (%s) is %s: %s",
                version.collection_id,
                version.number,
                version.storage_key,
                verdict.status.value,
                verdict.detail,
            )
            await self._events.emit(
                Event(
                    Action.VERIFY,
                    Outcome.FAILURE,
                    collection=version.collection_id,
                    version=version.number,
                    size=version.size,
                    reason=verdict.status.value,
                    detail=verdict.detail,
                )
            )
        return check

    async def _still_live(self, version: VersionRecord) -> bool:
        current = await self._versions.get_version(version.collection_id, version.number)
        return current is not None and current.id == version.id

    async def _examine(self, version: VersionRecord) -> _Examined:
        key = version.storage_key
        try:
            async with asyncio.timeout(self._io_timeout):
                info = await self._store.stat(key)
                if info is None:
                    return _Examined(integrity.missing())
                if info.size != version.size:
                    # No need to read it: the size alone says it is not what was stored.
                    verdict = integrity.judge(version.size, version.sha256, info.size, None)
                    return _Examined(verdict, actual_size=info.size)
                size, sha256 = await self._digest(key)
        except BlobNotFound:
            return _Examined(integrity.missing())
        except TimeoutError:
            took = format_duration(timedelta(seconds=self._io_timeout))
            return _Examined(integrity.unreadable(f"reading took longer than {took}"))
        except StorageError as exc:
            return _Examined(integrity.unreadable(str(exc) or type(exc).__name__))
        except Exception as exc:
            logger.exception("could not check %s", key)
            return _Examined(integrity.unreadable(f"{type(exc).__name__}: {exc}"))
        verdict = integrity.judge(version.size, version.sha256, size, sha256)
        return _Examined(verdict, actual_size=size, actual_sha256=sha256, bytes_read=size)

    async def _digest(self, key: str) -> tuple[int, str]:
        """Size and SHA-256 of the whole object, streamed: a few chunks in memory at most,
        hashed in a thread of its own so reading and hashing overlap."""
        digest = hashlib.sha256()
        hasher = ChunkWorker(digest.update, name="verify-sha256")
        size = 0
        try:
            async for chunk in self._store.read(key):
                size += len(chunk)
                await hasher.submit(chunk)
            await hasher.finish()
        except BaseException:
            await hasher.abort()
            raise
        return size, digest.hexdigest()

    # -- results -------------------------------------------------------------------------

    async def results(self, collection_id: str | None = None) -> list[VersionCheck]:
        """The latest result of every live version that has one."""
        return await self._results.results(collection_id)

    async def corrupt_counts(self) -> dict[str, int]:
        """Per collection with a verified live version: how many live versions the latest
        check found corrupt or missing (for the ``..._corrupt_versions`` gauge)."""
        return await self._results.corrupt_counts()

    # -- schedule ------------------------------------------------------------------------

    async def run_periodically(self, interval: float) -> None:
        """Check everything every ``interval`` seconds, one replica at a time, until
        cancelled. Never raises: a failed pass is logged and tried again later."""
        poll = max(0.05, min(interval, MAX_POLL_SECONDS))
        logger.info(
            "integrity checks scheduled every %s", format_duration(timedelta(seconds=interval))
        )
        await repeat_forever(lambda: self.run_if_due(interval), poll, "scheduled integrity check")

    async def run_if_due(self, interval: float) -> VerifyReport | None:
        """Run a pass when no replica ran one in the last ``interval`` seconds and none is
        running; None otherwise. The lease is held while the pass runs (renewed every
        third of it) and, after a pass that finished, until ``interval`` after its start,
        so the replicas share one schedule."""
        if self._leases is None:
            raise RuntimeError("IntegrityService was built without a lease repository")
        return await run_on_schedule(
            self._leases,
            LEASE_NAME,
            f"{self._instance}:{secrets.token_hex(4)}",
            self._lease_seconds,
            interval,
            self.verify,
            "integrity check lease",
        )

    async def free_lease_of_previous_life(self, tag: str | None) -> int:
        """At start-up: free the lease of a pass that a previous life of this replica
        (``tag``; None: any server, on SQLite) was running when it died, so the schedule
        goes on at once rather than after the lease. A pass in progress holds the lease at
        most one lease ahead; a finished pass keeps it until its interval is over, and that
        hold on the schedule stays. Returns how many were freed (0 or 1); failures are
        logged, never raised."""
        if self._leases is None:
            return 0
        # A few seconds more than a lease for the clocks of the previous life and this one.
        ending_before = self._clock() + timedelta(seconds=self._lease_seconds + 5)
        try:
            freed = await self._leases.release_server_leases(tag, ending_before)
        except Exception as exc:
            logger.warning("could not free the integrity check lease of a previous run: %s", exc)
            return 0
        if freed:
            logger.warning(
                "freed the integrity check lease that %s held before this start",
                "a server" if tag is None else f"replica {tag}",
            )
        return freed
