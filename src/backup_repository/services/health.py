"""Readiness checks of ``/ready`` (docs/api.md), named as in the reference project."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from backup_repository.services.ports import ConfigurationProvider, DatabaseHealth
from backup_repository.storage.base import BlobStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: bool
    message: str
    details: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "statusText": f"{self.name}={str(self.status).lower()}",
            "message": self.message,
        }
        if self.details:
            result["details"] = list(self.details)
        return result


class ReadinessCheck(Protocol):
    name: str

    async def run(self) -> CheckResult: ...


class DbValidator:
    name = "DbValidator"

    def __init__(self, database: DatabaseHealth) -> None:
        self._database = database

    async def run(self) -> CheckResult:
        try:
            await self._database.ping()
        except Exception as exc:
            logger.warning("database check failed: %s", exc)
            return CheckResult(self.name, False, f"database is not reachable: {type(exc).__name__}")
        return CheckResult(self.name, True, "database is reachable")


class StorageAvailabilityValidator:
    """Writes, reads back and deletes a small object."""

    name = "StorageAvailabilityValidator"

    def __init__(self, store: BlobStore) -> None:
        self._store = store

    async def run(self) -> CheckResult:
        try:
            await self._store.probe()
        except Exception as exc:
            logger.warning("storage check failed: %s", exc)
            return CheckResult(self.name, False, f"storage is not usable: {exc}")
        return CheckResult(self.name, True, "storage accepts writes, reads and deletes")


class ConfigurationProviderValidator:
    """Fails when the provider cannot be read at all. Broken single objects do not make the
    server unready (that would take every replica out at once over one typo); they are
    listed in ``details`` and refuse their own requests."""

    name = "ConfigurationProviderValidator"

    def __init__(self, provider: ConfigurationProvider) -> None:
        self._provider = provider

    async def run(self) -> CheckResult:
        snapshot = self._provider.snapshot()
        problems = tuple(str(p) for p in snapshot.problems)
        if not snapshot.usable:
            return CheckResult(
                self.name,
                False,
                f"configuration provider is not usable: {snapshot.unusable_reason}",
                problems,
            )
        message = f"{len(snapshot.users)} users and {len(snapshot.collections)} collections loaded"
        if problems:
            message += f"; {len(problems)} objects have errors and are not in use"
        return CheckResult(self.name, True, message, problems)


async def run_checks(checks: Sequence[ReadinessCheck], limit: float) -> list[CheckResult]:
    async def guarded(check: ReadinessCheck) -> CheckResult:
        try:
            return await asyncio.wait_for(check.run(), limit)
        except TimeoutError:
            return CheckResult(check.name, False, f"check did not finish within {limit:g}s")

    return list(await asyncio.gather(*(guarded(c) for c in checks)))
