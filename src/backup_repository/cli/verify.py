"""``backup-repository verify``: re-read every live version's stored object, recompute its
size and SHA-256, record the results (the collection health report and the metrics show
them) and print what is wrong.

Exit codes: 0 every version is ok, 1 a version is corrupt, missing or unreadable (or the
database failed), 2 bad usage.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Final

import click

from backup_repository.cli.options import (
    CONTEXT_SETTINGS,
    database_options,
    inherit_group_options,
    log_level_option,
    missing_sqlite_file,
    option,
    resolve_db_url,
    resolve_storage_url,
    storage_options,
)
from backup_repository.logs import configure_logging
from backup_repository.settings import SettingsError

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2

# Options the server also takes: given before the command (``backup-repository
# --db-url=... verify``) they count as if given after it.
_SHARED: Final = (
    "db_url",
    "db_hostname",
    "db_port",
    "db_user",
    "db_password",
    "db_name",
    "storage_url",
    "storage_io_timeout",
    "log_level",
)


@click.command("verify", context_settings=CONTEXT_SETTINGS)
@click.pass_context
@database_options()
@storage_options(timeout_help="Longest read of one stored file")
@option(
    "-c",
    "--collection",
    "collections",
    env="BR_VERIFY_COLLECTIONS",
    multiple=True,
    help="Check only this collection (repeatable; the variable takes names separated by "
    "spaces) [default: every collection]",
)
@log_level_option("warning")
def verify(ctx: click.Context, /, **options: Any) -> None:
    """Re-read every stored version, recompute its size and SHA-256 and record the result.

    Prints one line per version that is not ok and a summary; exits 0 when every version is
    ok, 1 when one is corrupt, missing or unreadable, 2 on bad usage."""
    inherit_group_options(ctx, options, _SHARED)
    configure_logging(options["log_level"].lower(), "console")
    try:
        db_url = resolve_db_url(options)
        missing = missing_sqlite_file(db_url)
        if missing is not None:
            raise SettingsError(f"the SQLite database {missing} does not exist (check --db-url)")
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    storage_url = resolve_storage_url(options)
    sys.exit(
        asyncio.run(
            run_verify(
                db_url,
                storage_url,
                options["storage_io_timeout"].total_seconds(),
                list(options["collections"]) or None,
            )
        )
    )


async def run_verify(
    db_url: str, storage_url: str, io_timeout: float, collections: list[str] | None
) -> int:
    """Run one pass and print its outcome; returns the exit code."""
    from backup_repository.db.engine import create_engine, migrate
    from backup_repository.db.integrity import SqlIntegrityRepository
    from backup_repository.db.versions import SqlVersionRepository
    from backup_repository.services.integrity import IntegrityService
    from backup_repository.storage.factory import idle_timeout_for, open_blob_store

    try:
        engine = create_engine(db_url)
        store = open_blob_store(storage_url, io_timeout=idle_timeout_for(io_timeout))
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    try:
        await migrate(engine)
        service = IntegrityService(
            versions=SqlVersionRepository(engine),
            store=store,
            results=SqlIntegrityRepository(engine),
            io_timeout=io_timeout,
        )
        report = await service.verify(collections=collections)
    except Exception as exc:
        click.echo(f"error: the check did not finish: {exc}", err=True)
        return EXIT_PROBLEMS
    finally:
        await store.close()
        await engine.dispose()
    for check in report.problems:
        click.echo(f"{check.collection_id} v{check.number}: {check.status}: {check.detail}")
    for name in collections or ():
        if name not in report.collections:
            click.echo(f"note: collection {name} has no stored versions", err=True)
    if report.skipped:
        click.echo(f"note: {report.skipped} versions were rotated away while being checked")
    click.echo(report.summary())
    return EXIT_OK if report.all_ok else EXIT_PROBLEMS
