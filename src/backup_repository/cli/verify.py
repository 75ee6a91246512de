"""``backup-repository verify``: re-read every live version's stored object, recompute its
size and SHA-256, record the results (the collection health report and the metrics show
them) and print what is wrong.

Exit codes: 0 every version is ok, 1 a version is corrupt, missing or unreadable (or the
database failed), 2 bad usage.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import click
from click.core import ParameterSource
from sqlalchemy.engine import make_url

from backup_repository.db.urls import normalize_database_url
from backup_repository.domain.units import parse_duration
from backup_repository.logs import configure_logging
from backup_repository.settings import SettingsError

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2

# Storage client: the longest wait for any single answer (as the server uses).
STORAGE_IDLE_TIMEOUT: Final = 60.0

F = TypeVar("F", bound=Callable[..., Any])


# This module is imported by cli/server.py (which registers the command), so it does not
# import that module at load time; the helpers below are the server's, in small.
def _option(*names: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    """A flag that also reads the environment variable ``env``."""
    kwargs.setdefault("show_envvar", True)
    decorator: Callable[[F], F] = click.option(*names, envvar=env, **kwargs)
    return decorator


def _positive_seconds(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        seconds = parse_duration(value).total_seconds()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter("must be longer than zero")
    return seconds


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


@click.command(
    "verify", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.pass_context
@_option(
    "--db-url",
    env="BR_DB_URL",
    default=None,
    help="Database URL, as for the server [default: sqlite:///data/backup-repository.db]",
)
@_option("--db-hostname", env="BR_DB_HOSTNAME", default=None, help="PostgreSQL host")
@_option(
    "--db-port",
    env="BR_DB_PORT",
    default=5432,
    type=click.IntRange(1, 65535),
    show_default=True,
    help="PostgreSQL port",
)
@_option("--db-user", env="BR_DB_USERNAME", default=None, help="PostgreSQL user")
@_option("--db-password", env="BR_DB_PASSWORD", default=None, help="PostgreSQL password")
@_option("--db-name", env="BR_DB_NAME", default=None, help="PostgreSQL database name")
@_option(
    "--storage-url",
    env="BR_STORAGE_DRIVER_URL",
    default=None,
    help="Storage URL, as for the server [default: file://<working dir>/data/storage]",
)
@_option(
    "--storage-io-timeout",
    env="BR_STORAGE_IO_TIMEOUT",
    default="2h",
    show_default=True,
    callback=_positive_seconds,
    help="Longest read of one stored file",
)
@_option(
    "-c",
    "--collection",
    "collections",
    env="BR_VERIFY_COLLECTIONS",
    multiple=True,
    help="Check only this collection (repeatable; the variable takes names separated by "
    "spaces) [default: every collection]",
)
@_option(
    "--log-level",
    env="BR_LOG_LEVEL",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False),
)
def verify(ctx: click.Context, /, **options: Any) -> None:
    """Re-read every stored version, recompute its size and SHA-256 and record the result.

    Prints one line per version that is not ok and a summary; exits 0 when every version is
    ok, 1 when one is corrupt, missing or unreadable, 2 on bad usage."""
    from backup_repository.cli.server import resolve_db_url, resolve_storage_url

    _inherit_group_options(ctx, options)
    configure_logging(options["log_level"].lower(), "console")
    try:
        db_url = resolve_db_url(options)
        _require_existing_sqlite(db_url)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    storage_url = resolve_storage_url(options)
    sys.exit(
        asyncio.run(
            run_verify(
                db_url,
                storage_url,
                float(options["storage_io_timeout"]),
                list(options["collections"]) or None,
            )
        )
    )


def _inherit_group_options(ctx: click.Context, options: dict[str, Any]) -> None:
    parent = ctx.parent
    if parent is None:
        return
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    for name in _SHARED:
        if ctx.get_parameter_source(name) in given:
            continue
        if name in parent.params and parent.get_parameter_source(name) in given:
            value = parent.params[name]
            options[name] = value.total_seconds() if isinstance(value, timedelta) else value


def _require_existing_sqlite(db_url: str) -> None:
    """A SQLite file that does not exist would be created empty and "verified" with
    nothing in it: most likely the wrong path, so refuse."""
    url = make_url(normalize_database_url(db_url))
    if url.get_backend_name() != "sqlite":
        return
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    if not Path(database).expanduser().exists():
        raise SettingsError(f"the SQLite database {database} does not exist (check --db-url)")


async def run_verify(
    db_url: str, storage_url: str, io_timeout: float, collections: list[str] | None
) -> int:
    """Run one pass and print its outcome; returns the exit code."""
    from backup_repository.db.engine import create_engine, migrate
    from backup_repository.db.integrity import SqlIntegrityRepository
    from backup_repository.db.versions import SqlVersionRepository
    from backup_repository.services.integrity import IntegrityService
    from backup_repository.storage.objectstore import open_blob_store

    try:
        engine = create_engine(db_url)
        store = open_blob_store(storage_url, io_timeout=min(STORAGE_IDLE_TIMEOUT, io_timeout))
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
