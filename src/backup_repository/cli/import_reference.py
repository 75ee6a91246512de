"""``backup-repository import-reference``: register the versions a reference (Go, v4)
deployment left in its bucket, so that this server can take over the same bucket
(docs/migration.md).

Exit status: 0 when every object found was registered (or already was), 1 when something
was skipped, conflicted or could not be done, 2 for usage errors (bad options, an unknown
collection, configuration or database that cannot be used).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from backup_repository.cli.options import (
    CONTEXT_SETTINGS,
    database_options,
    log_level_option,
    missing_sqlite_file,
    option,
    provider_options,
    resolve_config_path,
    resolve_db_url,
    resolve_kubeconfig,
    resolve_storage_url,
    storage_options,
)
from backup_repository.db.urls import normalize_database_url, render_url_safely
from backup_repository.domain.errors import DependencyUnavailable
from backup_repository.domain.identity import Collection
from backup_repository.domain.import_reference import Problem
from backup_repository.logs import configure_logging
from backup_repository.services.import_reference import (
    CollectionReport,
    ImportRepository,
    UploadLock,
)
from backup_repository.services.ports import ConfigSnapshot
from backup_repository.settings import SettingsError

logger = logging.getLogger("backup_repository.import")

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2


class UsageProblem(Exception):
    """Exit with status 2 and this message."""


class Unreachable(Exception):
    """A database cannot be reached: exit with status 1 and this message."""


@asynccontextmanager
async def _reaching(what: str, url: str) -> AsyncIterator[None]:
    """Turn a failure to reach a database into :class:`Unreachable`, naming it."""
    from backup_repository.db.repositories import is_unavailable

    try:
        yield
    except DependencyUnavailable as exc:
        raise Unreachable(_unreachable(what, url, exc.__cause__ or exc)) from exc
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        raise Unreachable(_unreachable(what, url, exc)) from exc


def _unreachable(what: str, url: str, cause: BaseException) -> str:
    reason = str(cause) or type(cause).__name__
    return f"cannot reach {what} at {render_url_safely(url)}: {reason}"


@click.command("import-reference", context_settings=CONTEXT_SETTINGS)
@database_options("Database URL of this server")
@storage_options(
    url_help="The bucket the reference deployment used (the server then uses it too)",
    timeout_help="Longest read of one object",
)
@provider_options("Where the BackupCollection objects come from")
@option(
    "--reference-db-url",
    env="BR_REFERENCE_DB_URL",
    default=None,
    help="The reference deployment's PostgreSQL database: version numbers, times and "
    "uploaders come from its uploaded_versions table instead of the file names",
)
@option(
    "-c",
    "--collection",
    "collections",
    env="BR_IMPORT_COLLECTIONS",
    multiple=True,
    help="Import only this collection (repeatable) [default: every configured collection]",
)
@option(
    "--dry-run",
    env="BR_IMPORT_DRY_RUN",
    is_flag=True,
    default=False,
    help="Read and check everything, print what would be registered, write nothing",
)
@option(
    "--allow-non-openpgp",
    env="BR_IMPORT_ALLOW_NON_OPENPGP",
    is_flag=True,
    default=False,
    help="Register objects that are not encrypted OpenPGP messages too (reported)",
)
@log_level_option("warning")
def import_reference(**options: Any) -> None:
    """Register the versions already in a reference deployment's bucket.

    Objects are found at <collection>/<filename>; the version number comes from the
    collection's filenameTemplate (or from the reference's uploaded_versions table with
    --reference-db-url). Each object is read once to compute its SHA-256 and to check it
    is an encrypted OpenPGP message. Running it again registers nothing twice. Run it
    before starting this server on the bucket."""
    configure_logging(str(options["log_level"]).lower(), "console")
    try:
        job = Job(
            db_url=resolve_db_url(options),
            storage_url=resolve_storage_url(options),
            io_timeout=options["storage_io_timeout"].total_seconds(),
            provider=options["provider"],
            config_path=resolve_config_path(options),
            namespace=options["namespace"],
            kubeconfig=resolve_kubeconfig(options),
            reference_db_url=options["reference_db_url"] or None,
            collections=tuple(options["collections"]),
            dry_run=options["dry_run"],
            allow_non_openpgp=options["allow_non_openpgp"],
        )
        code = asyncio.run(job.run())
    except (UsageProblem, SettingsError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(code)


@dataclass(frozen=True)
class Job:
    db_url: str
    storage_url: str
    io_timeout: float
    provider: str
    config_path: Path
    namespace: str
    kubeconfig: Path | None
    reference_db_url: str | None
    collections: tuple[str, ...]
    dry_run: bool
    allow_non_openpgp: bool

    async def run(self) -> int:
        snapshot = await self._configuration()
        chosen = self._choose(snapshot)
        try:
            return await self._import(chosen, snapshot)
        except Unreachable as exc:
            click.echo(f"error: {exc}", err=True)
            return EXIT_INCOMPLETE
        except DependencyUnavailable as exc:
            click.echo(f"error: {exc.message}", err=True)
            return EXIT_INCOMPLETE

    async def _configuration(self) -> ConfigSnapshot:
        from backup_repository.config.providers import open_provider

        provider = open_provider(self.provider, self.config_path, self.namespace, self.kubeconfig)
        try:
            await provider.start()
            snapshot: ConfigSnapshot = provider.snapshot()
        finally:
            await provider.close()
        if not snapshot.usable:
            raise UsageProblem(f"the configuration cannot be read: {snapshot.unusable_reason}")
        for problem in snapshot.problems:
            click.echo(f"warning: configuration: {problem}", err=True)
        return snapshot

    def _choose(self, snapshot: ConfigSnapshot) -> list[Collection]:
        available = snapshot.collections
        if not self.collections:
            if not available:
                raise UsageProblem("the configuration has no usable BackupCollection")
            return [available[name] for name in sorted(available)]
        unknown = [name for name in self.collections if name not in available]
        if unknown:
            broken = {p.name for p in snapshot.problems if p.kind == "BackupCollection"}
            reasons = [
                f"{name} (its object has errors, see the warnings)"
                if name in broken
                else f"{name} (no such BackupCollection)"
                for name in unknown
            ]
            raise UsageProblem(f"cannot import collection {', '.join(reasons)}")
        return [available[name] for name in dict.fromkeys(self.collections)]

    async def _import(self, chosen: Sequence[Collection], snapshot: ConfigSnapshot) -> int:
        from backup_repository.db.engine import create_engine, migrate
        from backup_repository.db.import_reference import (
            ReferenceSchemaError,
            SqlImportRepository,
            SqlReferenceVersions,
        )
        from backup_repository.db.versions import SqlVersionRepository
        from backup_repository.services.import_reference import ImportService, NoVersions
        from backup_repository.storage.base import StorageError
        from backup_repository.storage.factory import idle_timeout_for, open_blob_store
        from backup_repository.storage.urls import redact_storage_url

        _check_db_url(self.db_url, "--db-url")
        if self.reference_db_url:
            _check_db_url(self.reference_db_url, "--reference-db-url")
            if missing_sqlite_file(self.reference_db_url) is not None:
                raise UsageProblem("--reference-db-url names a SQLite file that does not exist")
        try:
            store = open_blob_store(self.storage_url, io_timeout=idle_timeout_for(self.io_timeout))
        except ValueError as exc:
            raise UsageProblem(f"--storage-url: {exc}") from None
        except StorageError as exc:
            click.echo(f"error: {exc}", err=True)
            return EXIT_INCOMPLETE
        engines = []
        try:
            records: ImportRepository = NoVersions()
            engine = None
            if not (self.dry_run and missing_sqlite_file(self.db_url) is not None):
                engine = create_engine(self.db_url)
                engines.append(engine)
                sql_records = SqlImportRepository(engine)
                async with _reaching("the database", self.db_url):
                    if not self.dry_run:
                        await migrate(engine)
                        records = sql_records
                    elif await sql_records.schema_ready():
                        records = sql_records
            reference = None
            if self.reference_db_url:
                reference_engine = create_engine(self.reference_db_url)
                engines.append(reference_engine)
                reference = SqlReferenceVersions(reference_engine)
                try:
                    async with _reaching("the reference database", self.reference_db_url):
                        await reference.check()
                except ReferenceSchemaError as exc:
                    raise UsageProblem(str(exc)) from None
            logger.info("database: %s", render_url_safely(self.db_url))
            logger.info("storage: %s", redact_storage_url(self.storage_url))
            locks: UploadLock = SqlVersionRepository(engine) if engine is not None else _NoLocks()
            service = ImportService(
                locks,
                records,
                store,
                reference=reference,
                io_timeout=self.io_timeout,
            )
            reports = []
            for collection in chosen:
                report = await service.import_collection(
                    collection, dry_run=self.dry_run, allow_non_openpgp=self.allow_non_openpgp
                )
                _print_report(report)
                reports.append(report)
            extra = 0
            if reference is not None and not self.collections:
                extra = await _unconfigured(reference, snapshot)
            _print_summary(reports, self.dry_run)
            incomplete = extra or any(not r.ok for r in reports)
            return EXIT_INCOMPLETE if incomplete else EXIT_OK
        finally:
            await store.close()
            for engine_ in engines:
                await engine_.dispose()


class _NoLocks:
    """Locking for a dry run without a database: a dry run never locks."""

    async def try_lock(self, collection_id: str, owner: str, lease_seconds: float) -> int | None:
        raise RuntimeError("a dry run takes no lock")

    async def renew_lock(self, collection_id: str, owner: str, lease_seconds: float) -> bool:
        return False

    async def release_lock(self, collection_id: str, owner: str) -> None:
        return None


async def _unconfigured(reference: Any, snapshot: ConfigSnapshot) -> int:
    """Report collections the reference database has versions of but the configuration
    does not declare; returns how many there are."""
    counts: dict[str, int] = await reference.counts()
    missing = {name: n for name, n in counts.items() if name not in snapshot.collections}
    for name, count in sorted(missing.items()):
        click.echo(
            f"{name}: not imported: the reference database has {count} version(s) of it, "
            f"but there is no usable BackupCollection {name!r}"
        )
    return len(missing)


def _check_db_url(url: str, flag: str) -> None:
    try:
        normalize_database_url(url)
    except ValueError as exc:
        raise UsageProblem(f"{flag}: {exc}") from None


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_report(report: CollectionReport) -> None:
    verb = "would register" if report.dry_run else "registered"
    if report.error:
        click.echo(f"{report.collection}: not imported: {report.error}")
        return
    skipped = len(report.findings)
    by_kind = ", ".join(f"{report.count(p)} {p.value}" for p in Problem if report.count(p))
    counter = (
        f"last version number {report.counter_before}"
        if report.counter_after == report.counter_before
        else f"last version number {report.counter_before} -> {report.counter_after}"
    )
    click.echo(
        f"{report.collection}: {len(report.registered)} {verb}, "
        f"{report.already_registered} already registered, {skipped} skipped"
        + (f" ({by_kind})" if by_kind else "")
        + f"; {counter}"
    )
    for version in report.registered:
        flag = "" if version.openpgp else ", NOT OpenPGP"
        click.echo(
            f"  {verb} v{version.number} {version.key} ({version.size} bytes, "
            f"sha256 {version.sha256}, created {_when(version.created_at)}{flag})"
        )
    for finding in sorted(report.findings, key=lambda f: f.key):
        click.echo(f"  skipped {finding}")
    for note in report.notes:
        click.echo(f"  note: {note}")


def _print_summary(reports: Sequence[CollectionReport], dry_run: bool) -> None:
    registered = sum(len(r.registered) for r in reports)
    already = sum(r.already_registered for r in reports)
    skipped = sum(len(r.findings) for r in reports)
    failed = sum(1 for r in reports if r.error)
    verb = "would be registered" if dry_run else "registered"
    line = (
        f"summary: {len(reports)} collection(s), {registered} version(s) {verb}, "
        f"{already} already registered, {skipped} skipped"
    )
    if failed:
        line += f", {failed} collection(s) not imported"
    if dry_run:
        line += " (dry run: nothing was written)"
    click.echo(line)
