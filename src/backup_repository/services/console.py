"""The web console's view models (http/ui/): the dashboard of every collection a caller may
see, worst first, and one collection's page. No HTTP here.

Every figure comes from the services the API uses (``CollectionService`` for what a caller
may see and the usage, ``CollectionHealthService`` for the checks, ``domain/windows.py``
for the windows), so the console shows what the API answers. The dashboard reads the
versions and integrity results of all its collections in one query each
(``ConsoleRepository``) and runs the checks that need only those records; the collection
page runs the whole health report, stored objects included.

A collection's status:

- **failing**: a health check other than the window check fails (a version over
  ``maxOneVersionSize``, the versions over ``maxCollectionSize``, a stored object missing or
  of the wrong size, the last integrity check found a version corrupt or missing);
- **late**: the window check fails: the most recent backup window closed without a
  version uploaded in it;
- **unknown**: no version yet and no window has closed, or a check could not run (the
  storage did not answer);
- **ok**: otherwise.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

from backup_repository.domain import authz
from backup_repository.domain.authz import CollectionAction
from backup_repository.domain.identity import BackupWindow, Collection
from backup_repository.domain.integrity import (
    CheckStatus,
    LatestCheck,
    integrity_health,
    integrity_health_summarized,
)
from backup_repository.domain.windows import WindowState, next_start, window_state
from backup_repository.services.auth import AuthContext
from backup_repository.services.collection_health import CollectionHealthService, RecordedVersion
from backup_repository.services.collections import CollectionService, UploadWindow, Usage
from backup_repository.services.health import CheckResult
from backup_repository.services.ports import (
    CheckMark,
    ConsoleRepository,
    VersionCheck,
    VersionRecord,
    VersionSize,
)

WINDOW_CHECK: Final = "BackupWindowValidator"
OBJECTS_CHECK: Final = "StoredObjectsValidator"
INTEGRITY_CHECK: Final = "VersionsIntegrityValidator"
# How many of the newest versions the size chart shows.
CHART_POINTS: Final = 40
# A version smaller than this share of the one before it stands out in the chart.
SHRINK_RATIO: Final = 0.5


_CHECK_STATUS: Final = {status.value: status for status in CheckStatus}
_NOT_VERIFIED: Final = (integrity_health([], []).ok, integrity_health([], []).message)


class Status(StrEnum):
    FAILING = "failing"
    LATE = "late"
    UNKNOWN = "unknown"
    OK = "ok"

    @property
    def rank(self) -> int:
        """0 for the worst; the dashboard sorts by it."""
        return list(Status).index(self)


@dataclass(frozen=True)
class SizePoint:
    number: int
    size: int
    # Much smaller than the version before it (SHRINK_RATIO).
    shrank: bool = False


@dataclass(frozen=True)
class CollectionSummary:
    """One collection as the dashboard shows it."""

    collection: Collection
    status: Status
    reasons: tuple[str, ...]
    usage: Usage
    last_backup: datetime | None
    age: timedelta | None
    window: WindowState
    biggest: int
    sizes: tuple[SizePoint, ...]
    checks: tuple[CheckResult, ...]
    warnings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.collection.name


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    collections: tuple[CollectionSummary, ...]
    # Of the collections shown (those matching the name filter).
    counts: dict[Status, int]
    # Every collection the caller may see, the filter aside.
    total: int
    name_filter: str = ""


@dataclass(frozen=True)
class CheckView:
    """A health check's result with what it means and how to fix a failure."""

    result: CheckResult
    meaning: str
    fix: str


@dataclass(frozen=True)
class VersionRow:
    version: VersionRecord
    # The latest integrity check of the version; None: never checked.
    check: VersionCheck | None


@dataclass(frozen=True)
class WindowView:
    cron: str
    duration: timedelta
    next_opening: datetime


@dataclass(frozen=True)
class Command:
    title: str
    text: str


@dataclass(frozen=True)
class CollectionPage:
    summary: CollectionSummary
    versions: tuple[VersionRow, ...]  # newest first
    checks: tuple[CheckView, ...]
    windows: tuple[WindowView, ...]
    upload_window: UploadWindow
    may_download: bool
    may_upload: bool
    commands: tuple[Command, ...] = field(default=())


EXPLANATIONS: Final[dict[str, tuple[str, str]]] = {
    WINDOW_CHECK: (
        "A version must be uploaded in each backup window (UTC); this looks at the most "
        "recent window that has closed.",
        "Check that the backup job runs on schedule (its cron, in UTC, must fall inside a "
        "window) and read its last log. While a window is open, run it by hand "
        "(backup-maker make); an account with uploadsAnytime may upload at any time.",
    ),
    "VersionsSizeValidator": (
        "Every version must be at most maxOneVersionSize.",
        "Find out why the backup grew. If the growth is expected, raise maxOneVersionSize "
        "in the collection's configuration.",
    ),
    "SumOfVersionsValidator": (
        "All live versions together must fit in maxCollectionSize.",
        "Lower maxBackupsCount (rotation deletes the oldest versions at the next upload) "
        "or raise maxCollectionSize in the collection's configuration.",
    ),
    OBJECTS_CHECK: (
        "Every version's encrypted file must exist in the storage with its recorded size.",
        "Check the storage (bucket or folder, its credentials, its lifecycle rules). A "
        "version whose file is gone cannot be restored: make a new backup now.",
    ),
    INTEGRITY_CHECK: (
        "The latest integrity check (backup-repository verify, or --verify-interval) read "
        "each version back and compared its size and SHA-256 with those recorded at upload.",
        "A corrupt or missing version cannot be restored: make a new backup now and look "
        "at the storage. Run backup-repository verify to check again.",
    ),
}


def status_of(checks: Sequence[CheckResult], has_versions: bool) -> tuple[Status, tuple[str, ...]]:
    """The status of a collection from its health checks (see the module's description),
    with the reasons to show."""
    could_not_run = [
        c for c in checks if c.name == OBJECTS_CHECK and c.message.startswith("storage is")
    ]
    failed = [
        c for c in checks if not c.status and c.name != WINDOW_CHECK and c not in could_not_run
    ]
    if failed:
        return Status.FAILING, tuple(c.message for c in failed)
    window = [c for c in checks if c.name == WINDOW_CHECK and not c.status]
    if window:
        return Status.LATE, tuple(c.message for c in window)
    if could_not_run:
        return Status.UNKNOWN, tuple(f"a check could not run: {c.message}" for c in could_not_run)
    if not has_versions:
        return Status.UNKNOWN, ("no version uploaded yet",)
    return Status.OK, ()


def size_points(live: Sequence[RecordedVersion]) -> tuple[SizePoint, ...]:
    """The sizes of the newest CHART_POINTS versions (oldest first); a version much smaller
    than the one before it is marked."""
    recent = list(live[-(CHART_POINTS + 1) :])
    points: list[SizePoint] = []
    for index, version in enumerate(recent):
        before = recent[index - 1].size if index else None
        shrank = before is not None and version.size < before * SHRINK_RATIO
        points.append(SizePoint(version.number, version.size, shrank))
    return tuple(points[-CHART_POINTS:])


def _warnings(points: Sequence[SizePoint]) -> tuple[str, ...]:
    if points and points[-1].shrank and len(points) > 1:
        last, before = points[-1], points[-2]
        share = round(100 * last.size / before.size) if before.size else 0
        return (f"v{last.number} is {share}% of the size of v{before.number}",)
    return ()


def _integrity(
    live: Sequence[VersionSize],
    marks: Sequence[CheckMark],
    tally: tuple[int, datetime] | None,
) -> CheckResult:
    """The integrity check of the health report (``integrity_health``) from what the
    dashboard reads in a batch: the versions whose latest check was not ``ok``, and how many
    live versions were checked and when last. The verdict and its message depend only on
    those (which version numbers were checked ``ok`` does not matter, only how many), so the
    ``ok`` ones are given live numbers not otherwise named, and the time of the latest
    check."""
    if tally is None:
        return CheckResult(INTEGRITY_CHECK, *_NOT_VERIFIED)
    checked, last = tally
    numbers = {v.number for v in live}
    named = {
        c.number: LatestCheck(c.number, _CHECK_STATUS[c.status], c.detail, last)
        for c in marks
        if c.number in numbers
    }
    more_ok = max(0, min(checked - len(named), len(numbers) - len(named)))
    verdict = integrity_health_summarized(len(numbers), list(named.values()), more_ok, last)
    return CheckResult(INTEGRITY_CHECK, verdict.ok, verdict.message, verdict.problems)


def filter_matches(name: str, wanted: str) -> bool:
    return wanted.strip().lower() in name.lower()


class ConsoleService:
    def __init__(
        self,
        collections: CollectionService,
        health: CollectionHealthService,
        repository: ConsoleRepository,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._collections = collections
        self._health = health
        self._repository = repository
        self._clock = clock

    def with_clock(self, clock: Callable[[], datetime]) -> ConsoleService:
        """The same service at another time (tests move the clock to make a window close)."""
        return ConsoleService(self._collections, self._health, self._repository, clock)

    async def dashboard(self, ctx: AuthContext, name_filter: str = "") -> Dashboard:
        now = self._clock()
        every = await self._collections.list_collections(ctx)
        visible = [(c, u) for c, u in every if filter_matches(c.name, name_filter)]
        names = [c.name for c, _ in visible]
        live = await self._repository.live_sizes_of(names)
        newest = await self._repository.newest_uploads_of(names)
        marks = await self._repository.check_marks_of(names)
        tallies = await self._repository.check_tallies_of(names)
        summaries = []
        for collection, usage in visible:
            versions = live.get(collection.name, [])
            checks = [
                *self._health.record_checks(collection, versions, newest.get(collection.name), now),
                _integrity(versions, marks.get(collection.name, []), tallies.get(collection.name)),
            ]
            summaries.append(
                self._summary(collection, usage, versions, newest.get(collection.name), checks, now)
            )
        counts = {status: 0 for status in Status}
        for summary in summaries:
            counts[summary.status] += 1
        summaries.sort(key=lambda s: (s.status.rank, s.name))
        return Dashboard(now, tuple(summaries), counts, len(every), name_filter.strip())

    async def collection(
        self, ctx: AuthContext, collection_id: str, base_url: str = ""
    ) -> CollectionPage:
        """One collection, authorized as the API's version listing is (403 or 404 alike)."""
        now = self._clock()
        collection, newest_first, usage, _ = await self._collections.list_versions(
            ctx, collection_id
        )
        live = list(reversed(newest_first))
        results = await self._health.checks(collection, live, now)
        summary = self._summary(
            collection, usage, live, live[-1].created_at if live else None, results, now
        )
        latest_checks = (await self._repository.latest_checks_of([collection.name])).get(
            collection.name, []
        )
        by_version = {c.version_id: c for c in latest_checks}
        anytime = authz.may_act_on_collection(
            ctx.principal, collection, CollectionAction.UPLOAD_OUTSIDE_WINDOW
        )
        login = ctx.user.name + (
            f"${ctx.principal.access_key_name}" if ctx.principal.access_key_name else ""
        )
        return CollectionPage(
            summary=summary,
            versions=tuple(VersionRow(v, by_version.get(v.id)) for v in newest_first),
            checks=tuple(CheckView(r, *EXPLANATIONS.get(r.name, ("", ""))) for r in results),
            windows=tuple(_window_view(w, now) for w in collection.windows),
            upload_window=UploadWindow(window_state(collection.windows, now), anytime),
            may_download=authz.may_act_on_collection(
                ctx.principal, collection, CollectionAction.DOWNLOAD
            ),
            may_upload=authz.may_act_on_collection(
                ctx.principal, collection, CollectionAction.UPLOAD
            ),
            commands=commands(
                base_url, collection.name, login, newest_first[0] if newest_first else None
            ),
        )

    @staticmethod
    def _summary(
        collection: Collection,
        usage: Usage,
        live: Sequence[RecordedVersion],
        last_backup: datetime | None,
        checks: Sequence[CheckResult],
        now: datetime,
    ) -> CollectionSummary:
        status, reasons = status_of(checks, bool(live))
        points = size_points(live)
        return CollectionSummary(
            collection=collection,
            status=status,
            reasons=reasons,
            usage=usage,
            last_backup=last_backup,
            age=(now - last_backup) if last_backup else None,
            window=window_state(collection.windows, now),
            biggest=max((v.size for v in live), default=0),
            sizes=points,
            checks=tuple(checks),
            warnings=_warnings(points),
        )


def _window_view(window: BackupWindow, now: datetime) -> WindowView:
    return WindowView(window.cron, window.duration, next_start(window, now))


def commands(
    base_url: str, collection_id: str, login: str, latest: VersionRecord | None
) -> tuple[Command, ...]:
    """Ready-to-copy command lines for this collection (docs/client.md, docs/api.md)."""
    url = base_url.rstrip("/") or "https://backups.example.org"
    number = str(latest.number) if latest else "latest"
    filename = latest.filename if latest else f"{collection_id}.gpg"
    api = f"{url}/api/stable/repository/collection/{collection_id}/version"
    q = shlex.quote
    credentials = q(f'{{"username": "{login}", "password": "..."}}')
    return (
        Command(
            "Upload a backup with backup-maker",
            f"export BM_URL={q(url)}\n"
            f"backup-maker login --username {q(login)} --save-token ~/.backup-token "
            f"--scope {q(collection_id + '=backupUploader')}\n"
            "export BM_AUTH_TOKEN_FILE=~/.backup-token\n"
            f"backup-maker make -i {q(collection_id)} -k backup-public.asc "
            "-c 'your backup command, e.g. pg_dump --format=custom mydb'",
        ),
        Command(
            "Restore with backup-maker",
            f"export BM_URL={q(url)}\n"
            f"backup-maker login --username {q(login)} --save-token ~/.restore-token "
            f"--scope {q(collection_id + '=backupDownloader')}\n"
            "export BM_AUTH_TOKEN_FILE=~/.restore-token\n"
            "export BM_PASSPHRASE_FILE=/run/secrets/backup-passphrase\n"
            f"backup-maker restore -i {q(collection_id)} -s {number} -p backup-private.asc "
            "-c 'your restore command, e.g. pg_restore --clean --dbname=mydb'",
        ),
        Command(
            "Upload with curl",
            f"TOKEN=$(curl -s {q(url + '/api/stable/auth/login')} "
            f"-H 'Content-Type: application/json' -d {credentials} | jq -r .data.token)\n"
            f'curl -s -H "Authorization: Bearer $TOKEN" --data-binary @backup.gpg {q(api)}',
        ),
        Command(
            "Download with curl (the encrypted file, then decrypt it)",
            f'curl -s -H "Authorization: Bearer $TOKEN" -o {q(filename)} '
            f"{q(api + '/' + number)}\n"
            f"gpg --decrypt {q(filename)} > restored",
        ),
    )
