"""Readiness checks of ``/ready`` (docs/api.md), named as in the reference project."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from backup_repository.services.ports import (
    ConfigProblem,
    ConfigSnapshot,
    ConfigurationProvider,
    DatabaseHealth,
)
from backup_repository.storage.base import BlobStore

logger = logging.getLogger(__name__)


OK = "ok"
DEGRADED = "degraded"
FAILED = "failed"


@dataclass(frozen=True)
class CheckResult:
    """One check of ``/ready``. ``status`` is the reference's boolean (false fails the
    whole answer); ``degraded`` marks a check that passes with something to fix (a
    configuration with broken objects), reported as ``"state": "degraded"``."""

    name: str
    status: bool
    message: str
    details: tuple[str, ...] = ()
    degraded: bool = False
    # Structured problems (source, kind, name, field, message), for ``problems``.
    problems: tuple[ConfigProblem, ...] = ()

    @property
    def state(self) -> str:
        if not self.status:
            return FAILED
        return DEGRADED if self.degraded else OK

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "statusText": f"{self.name}={str(self.status).lower()}",
            "state": self.state,
            "message": self.message,
        }
        if self.details:
            result["details"] = list(self.details)
        if self.problems:
            result["problems"] = [
                {
                    "source": p.source,
                    "kind": p.kind,
                    "name": p.name,
                    "field": p.field,
                    "message": p.message,
                }
                for p in self.problems
            ]
        return result


def overall_state(results: Sequence[CheckResult]) -> str:
    """``failed`` when a check failed, else ``degraded`` when one is, else ``ok``."""
    states = {r.state for r in results}
    if FAILED in states:
        return FAILED
    return DEGRADED if DEGRADED in states else OK


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
    """Fails when the provider cannot be read at all. Broken single objects (and files that
    could not be parsed) do not make the server unready (that would take every replica out
    at once over one typo): the check passes as ``degraded``, lists the problems, and the
    broken objects refuse their own requests."""

    name = "ConfigurationProviderValidator"

    def __init__(self, provider: ConfigurationProvider) -> None:
        self._provider = provider

    async def run(self) -> CheckResult:
        snapshot = self._provider.snapshot()
        problems = snapshot.problems
        details = tuple(str(p) for p in problems)
        if not snapshot.usable:
            return CheckResult(
                self.name,
                False,
                f"configuration provider is not usable: {snapshot.unusable_reason}",
                details,
                problems=problems,
            )
        message = (
            f"{plural(len(snapshot.users), 'user')}, "
            f"{plural(len(snapshot.collections), 'collection')} and "
            f"{plural(len(snapshot.channels), 'notification channel')} loaded"
        )
        if problems:
            message += f"; {describe_problems(snapshot)}; see problems"
        return CheckResult(
            self.name, True, message, details, degraded=bool(problems), problems=problems
        )


def describe_problems(snapshot: ConfigSnapshot) -> str:
    """``2 problems (1 file could not be read, 1 object refused)``: problems without a kind
    are whole files; an object named in the snapshot is in use in spite of its problem
    (a subscription to a missing channel); every other object was left out."""
    in_use = {("BackupUser", n) for n in snapshot.users}
    in_use |= {("BackupCollection", n) for n in snapshot.collections}
    in_use |= {("NotificationChannel", n) for n in snapshot.channels}
    files: set[str] = set()
    refused: set[tuple[str, str, str, str]] = set()
    used: set[tuple[str, str]] = set()
    for problem in snapshot.problems:
        if not problem.kind:
            files.add(problem.source)
        elif problem.name and (problem.kind, problem.name) in in_use:
            used.add((problem.kind, problem.name))
        else:
            position = "" if problem.name else problem.message.partition(":")[0]
            refused.add((problem.source, problem.kind, problem.name, position))
    parts = []
    if files:
        # Sources of the kubernetes provider are resources ("kubernetes:<plural>").
        noun = "resource" if all(f.startswith("kubernetes:") for f in files) else "file"
        parts.append(f"{plural(len(files), noun)} could not be read")
    if refused:
        parts.append(f"{plural(len(refused), 'object')} refused")
    if used:
        parts.append(f"{plural(len(used), 'object')} in use with a problem")
    text = plural(len(snapshot.problems), "problem")
    return f"{text} ({', '.join(parts)})" if parts else text


def plural(count: int, noun: str) -> str:
    """``1 user``, ``2 users``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


async def run_checks(checks: Sequence[ReadinessCheck], limit: float) -> list[CheckResult]:
    async def guarded(check: ReadinessCheck) -> CheckResult:
        try:
            return await asyncio.wait_for(check.run(), limit)
        except TimeoutError:
            return CheckResult(check.name, False, f"check did not finish within {limit:g}s")

    return list(await asyncio.gather(*(guarded(c) for c in checks)))
