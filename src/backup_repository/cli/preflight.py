"""Checks the server runs before it listens: the port is free, the database answers and
its schema is migrated, the storage passes the same probe as ``/ready``, and the
configuration folder can be read. A failure becomes one :class:`StartupError`: one line
that names the setting (flag and ``BR_*`` variable), the cause and what to do, and the
exit code (2: a setting's value is wrong, 1: a dependency cannot be used right now).

The Kubernetes API is not checked here: an outage is routine in a cluster, so the server
starts anyway and ``/ready`` reports it (docs/configuration.md); only a ``--kubeconfig``
that cannot be read stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy.engine import make_url

from backup_repository.config.providers import open_provider
from backup_repository.db.engine import (
    create_engine,
    migrate,
    migrate_in_child_process,
    schema_is_current,
)
from backup_repository.db.urls import normalize_database_url, render_url_safely
from backup_repository.settings import Listen, Settings
from backup_repository.storage.base import StorageUnavailable
from backup_repository.storage.errors import first_line
from backup_repository.storage.factory import open_blob_store
from backup_repository.storage.urls import redact_storage_url

# Exit codes (docs/configuration.md, "Start-up checks").
EXIT_BAD_SETTING: Final = 2
EXIT_UNAVAILABLE: Final = 1

STORAGE_FLAG: Final = "--storage-url (BR_STORAGE_DRIVER_URL)"
CONFIG_FLAG: Final = "--config-local-path (BR_CONFIG_LOCAL_PATH)"
LISTEN_FLAG: Final = "--listen (BR_LISTEN)"
KUBECONFIG_FLAG: Final = "--kubeconfig (BR_KUBECONFIG)"

# PostgreSQL error codes (SQLSTATE) that mean a setting is wrong.
_NO_SUCH_DATABASE: Final = "3D000"
_BAD_CREDENTIALS: Final = frozenset({"28P01", "28000"})


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class DatabaseFlags:
    """How each part of the database settings was given, for the message."""

    name: str
    credentials: str
    address: str

    @classmethod
    def for_url(cls) -> DatabaseFlags:
        flag = "--db-url (BR_DB_URL)"
        return cls(flag, flag, flag)

    @classmethod
    def for_parts(cls) -> DatabaseFlags:
        return cls(
            "--db-name (BR_DB_NAME)",
            "--db-user/--db-password (BR_DB_USERNAME/BR_DB_PASSWORD)",
            "--db-hostname/--db-port (BR_DB_HOSTNAME/BR_DB_PORT)",
        )


def check_port(listen: Listen) -> None:
    """The address can be bound (nothing else listens there, the host is this machine's)."""
    try:
        infos = socket.getaddrinfo(
            listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        where = f"{listen.host}:{listen.port}"
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"{LISTEN_FLAG}: {where} is already in use by another program; stop it or "
                f"choose another port (e.g. --listen=:{listen.port + 1})",
                EXIT_UNAVAILABLE,
            ) from None
        if exc.errno == errno.EACCES:
            raise StartupError(
                f"{LISTEN_FLAG}: no permission to listen on {where}; choose a port above "
                "1023 or give the program that right",
                EXIT_BAD_SETTING,
            ) from None
        raise StartupError(
            f"{LISTEN_FLAG}: cannot listen on {where} ({exc.strerror or exc}); use an "
            "address of this machine, e.g. --listen=:8080",
            EXIT_BAD_SETTING,
        ) from None


async def check_dependencies(settings: Settings, database: DatabaseFlags) -> None:
    """Database, storage, configuration folder, in that order; the first failure raises."""
    with _quiet():
        await _check_database(settings.db_url, database)
        await _check_storage(settings)
        if settings.provider == "filesystem":
            await _check_configuration_folder(settings.config_local_path, settings.namespace)
        elif settings.kubeconfig is not None:
            _check_kubeconfig(settings.kubeconfig)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The checks log nothing: the server logs the same steps again when it starts, and a
    failure is reported as one line."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


async def _check_database(url: str, flags: DatabaseFlags) -> None:
    engine = create_engine(url)
    try:
        # A schema that is behind is migrated by a child process, so Alembic never takes
        # memory in the server's; migrate() then finds nothing to do, or (when the child
        # failed) does the work here and raises the real error.
        if not await schema_is_current(engine):
            await migrate_in_child_process(url)
        await migrate(engine)
    except Exception as exc:
        raise _database_error(url, flags, exc) from None
    finally:
        await engine.dispose()


def _database_error(url: str, flags: DatabaseFlags, exc: Exception) -> StartupError:
    parsed = make_url(normalize_database_url(url))
    cause = _root_cause(exc)
    detail = first_line(cause) or type(cause).__name__
    if parsed.get_backend_name() == "sqlite":
        return StartupError(
            f"{flags.address}: the SQLite database {parsed.database} cannot be used ({detail}); "
            "make its folder writable or choose another file",
            EXIT_UNAVAILABLE,
        )
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate == _NO_SUCH_DATABASE:
        return StartupError(
            f"{flags.name}: {detail} on the PostgreSQL server at {where}; create it "
            f"(createdb {parsed.database}) or correct the name",
            EXIT_BAD_SETTING,
        )
    if sqlstate in _BAD_CREDENTIALS:
        return StartupError(
            f"{flags.credentials}: the PostgreSQL server at {where} refused the login "
            f"({detail}); correct the user and password",
            EXIT_BAD_SETTING,
        )
    if isinstance(cause, OSError | TimeoutError):
        reason = "connection refused" if isinstance(cause, ConnectionRefusedError) else detail
        return StartupError(
            f"{flags.address}: cannot reach the PostgreSQL server at {where} ({reason}); "
            "start it, or correct the host and port",
            EXIT_UNAVAILABLE,
        )
    return StartupError(
        f"{flags.address}: the database {render_url_safely(url)} cannot be used ({detail}); "
        "check the URL and that the server accepts this user",
        EXIT_UNAVAILABLE,
    )


def _root_cause(exc: BaseException) -> BaseException:
    """The driver's own error behind SQLAlchemy's wrappers."""
    seen: set[int] = set()
    current = exc
    while id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "orig", None) or current.__cause__
        if inner is None:
            break
        current = inner
    return current


async def _check_storage(settings: Settings) -> None:
    where = redact_storage_url(settings.storage_url)
    try:
        store = open_blob_store(
            settings.storage_url, io_timeout=settings.storage_health_timeout.total_seconds()
        )
    except ValueError as exc:
        raise StartupError(
            f"{STORAGE_FLAG}: {where} cannot be used ({exc}); correct the URL",
            EXIT_BAD_SETTING,
        ) from None
    except StorageUnavailable as exc:
        raise StartupError(
            f"{STORAGE_FLAG}: {exc}; for a folder check that this user may create and "
            "write it, for a bucket check the URL and its credentials",
            EXIT_UNAVAILABLE,
        ) from None
    try:
        await store.probe()
    except StorageUnavailable as exc:
        raise StartupError(
            f"{STORAGE_FLAG}: the storage failed its write, read and delete check ({exc}); "
            "for a folder make it writable by this user, for a bucket check that it exists, "
            "is reachable and the credentials may write to it",
            EXIT_UNAVAILABLE,
        ) from None
    finally:
        await store.close()


def _check_kubeconfig(path: Path) -> None:
    """A kubeconfig named on purpose must be there: that is a setting, not an outage."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise StartupError(
            f"{KUBECONFIG_FLAG}: the kubeconfig {path} cannot be read ({exc.strerror or exc}); "
            "give the path of a readable kubeconfig file, or leave it out inside the cluster "
            "to use the service account",
            EXIT_BAD_SETTING,
        ) from None
    if not path.is_file():
        raise StartupError(
            f"{KUBECONFIG_FLAG}: {path} is not a file; give the path of a kubeconfig file",
            EXIT_BAD_SETTING,
        )


async def _check_configuration_folder(folder: Path, namespace: str) -> None:
    provider = open_provider("filesystem", folder, namespace, None)
    try:
        await asyncio.wait_for(provider.start(), timeout=60)
        snapshot = provider.snapshot()
    finally:
        await provider.close()
    if not snapshot.usable:
        raise StartupError(
            f"{CONFIG_FLAG}: {snapshot.unusable_reason}; point it at the folder with your "
            "users and collections (the examples/config folder of the project shows one)",
            EXIT_BAD_SETTING,
        )
