"""The purge of old sessions: rows of tokens that expired, or were revoked, longer than
``--session-retention`` ago are deleted, in the background, by one replica at a time.

Such a token is refused whether its row is there or not (a token is accepted only with an
active, unexpired session), so the purge changes no answer but the session listings; it
keeps the table, and the listings, from growing without end. The replicas share one
schedule through the ``session-purge`` lease of ``maintenance_leases``, as the scheduled
integrity check does (services/integrity.py).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from backup_repository.domain.units import format_duration
from backup_repository.services.leases import repeat_forever, run_on_schedule
from backup_repository.services.ports import LeaseRepository, SessionRepository

logger = logging.getLogger(__name__)

LEASE_NAME: Final = "session-purge"
# Rows deleted per transaction, so that no purge holds the table for long.
BATCH: Final = 1000
# How long a purge in progress holds the lease without renewing it (it renews every third),
# so the purge of a replica that died is taken over within this time.
DEFAULT_LEASE_SECONDS: Final = 60.0
# Replicas look at the lease at least this often.
MAX_POLL_SECONDS: Final = 60.0


class SessionPurger:
    def __init__(
        self,
        sessions: SessionRepository,
        leases: LeaseRepository,
        retention: timedelta,
        *,
        batch: int = BATCH,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        instance: str | None = None,
    ) -> None:
        if retention <= timedelta(0):
            raise ValueError("the session retention must be positive")
        self._sessions = sessions
        self._leases = leases
        self._retention = retention
        self._batch = batch
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._instance = instance or secrets.token_hex(8)

    async def run_periodically(self, interval: float) -> None:
        """Purge every ``interval`` seconds, one replica at a time, until cancelled. Never
        raises: a failed purge is logged and tried again later."""
        poll = max(0.05, min(interval, MAX_POLL_SECONDS))
        logger.info(
            "sessions expired or revoked more than %s ago are purged every %s",
            format_duration(self._retention),
            format_duration(timedelta(seconds=interval)),
        )
        await repeat_forever(lambda: self.run_if_due(interval), poll, "session purge")

    async def run_if_due(self, interval: float) -> int | None:
        """Purge when no replica did in the last ``interval`` seconds and none is purging;
        the number of sessions deleted, or None when it was not this replica's turn. The
        lease is held while the purge runs (renewed every third of it) and, after a purge
        that finished, until ``interval`` after its start."""
        return await run_on_schedule(
            self._leases,
            LEASE_NAME,
            f"{self._instance}:{secrets.token_hex(4)}",
            self._lease_seconds,
            interval,
            self._purge,
            "session purge lease",
        )

    async def _purge(self) -> int:
        cutoff = self._clock() - self._retention
        deleted = 0
        while True:
            count = await self._sessions.purge(cutoff, self._batch)
            deleted += count
            if count < self._batch:
                break
        if deleted:
            logger.info(
                "purged %d sessions expired or revoked before %s", deleted, cutoff.isoformat()
            )
        return deleted
