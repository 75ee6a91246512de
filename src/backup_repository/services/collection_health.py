"""The collection health report (``/collection/{id}/health``): the built-in checks of a
collection's windows, sizes and stored objects, then the checks composed in (the integrity
check of services/integrity.py). Asked for with the collection's health code."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from backup_repository.domain.errors import Forbidden
from backup_repository.domain.identity import Collection
from backup_repository.domain.windows import upload_matches_windows
from backup_repository.services.health import CheckResult
from backup_repository.services.ports import (
    ConfigurationProvider,
    VersionRecord,
    VersionRepository,
)
from backup_repository.storage.base import BlobStore, StorageError

HEALTH_CODE_INVALID = (
    "not authorized - invalid value of 'code' parameter: give the collection's health code "
    "as ?code=, as the Authorization header or as 'Authorization: Bearer <code>'"
)
# What an unknown collection's health code is compared with: SHA-256 hex is 64 digits, as a
# real secret is, so the comparison takes as long (and a match still refuses).
_UNKNOWN_COLLECTION_SECRET = "0" * 64


class RecordedVersion(Protocol):
    """What the checks of sizes read of a version (a ``VersionRecord`` has it)."""

    @property
    def number(self) -> int: ...

    @property
    def size(self) -> int: ...


class CollectionHealthCheck(Protocol):
    """A check of the collection health report composed in by the composition root (e.g.
    ``services/integrity.py``'s ``VersionsIntegrityValidator``); runs after the built-in
    ones, in the order given."""

    name: str

    async def run(self, collection: Collection, live: Sequence[VersionRecord]) -> CheckResult: ...


class CollectionHealthService:
    def __init__(
        self,
        config: ConfigurationProvider,
        versions: VersionRepository,
        store: BlobStore,
        checks: Sequence[CollectionHealthCheck] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._versions = versions
        self._store = store
        self._checks = tuple(checks)
        self._clock = clock

    async def report(self, collection_id: str, codes: Sequence[str]) -> list[CheckResult]:
        """Every check's result; Forbidden for a wrong code or an unknown collection.
        ``codes``: what the caller may have meant as the code (the ``code`` parameter, the
        Authorization header as it is and its Bearer credentials); one match is enough."""
        # An unknown collection is refused exactly as a wrong code is, after the same work
        # (a SHA-256 and a constant-time comparison per candidate against a stand-in
        # secret), so the answer does not tell which collection names exist.
        collection = self._config.snapshot().collections.get(collection_id)
        secret = _UNKNOWN_COLLECTION_SECRET if collection is None else collection.health_secret
        matches = True  # a collection without a health secret is open to monitoring
        if secret is not None:
            expected = secret.lower().encode()
            # Every candidate is compared (no early exit).
            compared = [
                hmac.compare_digest(hashlib.sha256(code.encode()).hexdigest().encode(), expected)
                for code in (list(codes) or [""])
            ]
            matches = any(compared)
        if collection is None or not matches:
            raise Forbidden(HEALTH_CODE_INVALID)
        return await self.checks(collection)

    async def checks(
        self,
        collection: Collection,
        live: Sequence[VersionRecord] | None = None,
        now: datetime | None = None,
    ) -> list[CheckResult]:
        """Every check of the report, for a caller already authorized otherwise (the web
        console's collection page); ``live`` (oldest first) is read when not given."""
        if live is None:
            live = await self._versions.live_versions(collection.name)
        results = self.record_checks(
            collection,
            live,
            live[-1].created_at if live else None,
            self._clock() if now is None else now,
        )
        results.append(await self._objects_check(live))
        for check in self._checks:
            results.append(await check.run(collection, live))
        return results

    def record_checks(
        self,
        collection: Collection,
        live: Sequence[RecordedVersion],
        latest_upload: datetime | None,
        now: datetime,
    ) -> list[CheckResult]:
        """The built-in checks that need only the recorded versions (oldest first) and when
        the newest was uploaded, no storage: the window, one version's size and the sum of
        sizes."""
        return [
            self._window_check(collection, latest_upload, now),
            self._size_check(collection, live),
            self._sum_check(collection, live),
        ]

    @staticmethod
    def _window_check(
        collection: Collection, latest_upload: datetime | None, now: datetime
    ) -> CheckResult:
        name = "BackupWindowValidator"
        ok = upload_matches_windows(collection.windows, latest_upload, now)
        if not collection.windows:
            return CheckResult(name, True, "no backup windows defined")
        if ok:
            return CheckResult(name, True, "the latest version was uploaded in time")
        return CheckResult(name, False, "no version was uploaded in the most recent backup window")

    @staticmethod
    def _size_check(collection: Collection, live: Sequence[RecordedVersion]) -> CheckResult:
        name = "VersionsSizeValidator"
        over = [v for v in live if v.size > collection.max_one_version_size]
        if over:
            numbers = ", ".join(f"v{v.number} ({v.size} bytes)" for v in over)
            return CheckResult(
                name,
                False,
                f"versions over maxOneVersionSize ({collection.max_one_version_size} bytes): "
                f"{numbers}",
            )
        return CheckResult(name, True, "every version is within maxOneVersionSize")

    @staticmethod
    def _sum_check(collection: Collection, live: Sequence[RecordedVersion]) -> CheckResult:
        name = "SumOfVersionsValidator"
        total = sum(v.size for v in live)
        if total > collection.max_collection_size:
            return CheckResult(
                name,
                False,
                f"versions use {total} bytes, over maxCollectionSize "
                f"({collection.max_collection_size} bytes)",
            )
        return CheckResult(
            name, True, f"versions use {total} of {collection.max_collection_size} bytes"
        )

    async def _objects_check(self, live: Sequence[VersionRecord]) -> CheckResult:
        name = "StoredObjectsValidator"
        problems: list[str] = []
        try:
            for version in live:
                info = await self._store.stat(version.storage_key)
                if info is None:
                    problems.append(f"v{version.number}: stored object is missing")
                elif info.size != version.size:
                    problems.append(
                        f"v{version.number}: stored object has {info.size} bytes, "
                        f"{version.size} recorded"
                    )
        except StorageError as exc:
            return CheckResult(name, False, f"storage is unavailable: {type(exc).__name__}")
        if problems:
            return CheckResult(name, False, "; ".join(problems), tuple(problems))
        return CheckResult(name, True, f"{len(live)} stored objects present with recorded sizes")
