"""What the server keeps out of memory: libraries of features the configuration does not
use are never imported (docs/benchmarks.md, "Memory"), and Alembic runs in a child process
or not at all."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from alembic.script import ScriptDirectory

from backup_repository.cli.server import SUBCOMMANDS, main
from backup_repository.db.engine import (
    alembic_config,
    create_engine,
    head_revision,
    migrate,
    migrate_in_child_process,
    schema_is_current,
)
from backup_repository.domain.notification_channels import (
    Channel,
    ChannelType,
    EventType,
    NotificationEvent,
    WebhookTarget,
)
from backup_repository.notify import build_sender
from notify_receivers import recorder
from support import JWT_SECRET, collection_doc, user_doc, write_config

# Never needed by a server with the default configuration, and each loaded by a feature
# it does not use (notification channels, the console's templates, migrations, the
# kubernetes provider, structlog's optional pretty tracebacks, backup windows' cron, the
# rate limits shared through Redis, the first metrics scrape, structlog itself: the first
# line with an exception or a stack).
UNUSED = (
    "alembic",
    "mako",
    "rich",
    "pygments",
    "httpx",
    "httpcore",
    "h11",
    "apprise",
    "smtplib",
    "jinja2",
    "kubernetes",
    "croniter",
    "dateutil",
    "obstore",  # storage other than file:// (storage/factory.py)
    "limits",
    "deprecated",
    "wrapt",
    "prometheus_client",
    "structlog",
)
# Modules of libraries the server does use, left out all the same: SQLAlchemy's ORM (the
# tables are Core tables, the async engine is loaded without it: db/engine.py) and, on
# SQLite, the PostgreSQL dialect (db/dialects.py).
UNUSED_MODULES = ("sqlalchemy.orm", "sqlalchemy.dialects.postgresql")
# The subcommands' own modules (what they use that the server does not): imported when a
# subcommand runs, never by the server.
SUBCOMMAND_ONLY = (
    "backup_repository.cli.import_reference",
    "backup_repository.cli.notify",
    "backup_repository.cli.verify",
    "backup_repository.services.import_reference",
    "backup_repository.domain.import_reference",
)

# Starts the app as `backup-repository` does (the command line's settings, the start-up
# checks, the lifespan), logs in once over ASGI, and prints the loaded modules.
STARTED = textwrap.dedent(
    """
    import asyncio, json, sys

    from backup_repository.cli.preflight import DatabaseFlags, check_dependencies
    from backup_repository.cli.server import build_settings, main
    from backup_repository.http.app import create_app


    async def login(app):
        body = json.dumps({"username": "admin", "password": "admin-pass"}).encode()
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/api/stable/auth/login",
            "raw_path": b"/api/stable/auth/login", "root_path": "", "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"host", b"localhost")],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return next(m["status"] for m in sent if m["type"] == "http.response.start")


    async def run(settings):
        await check_dependencies(settings, DatabaseFlags.for_url())
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            status = await login(app)
        return status


    context = main.make_context("backup-repository", sys.argv[1:])
    status = asyncio.run(run(build_settings(context.params)))
    print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
    """
)


def test_head_revision_is_alembics() -> None:
    """The head read from the migration files (without Alembic) is the one Alembic finds."""
    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_a_current_schema_is_recognised_and_an_old_one_is_not(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        assert not await schema_is_current(engine)
        await migrate(engine)
        assert await schema_is_current(engine)
        async with engine.begin() as connection:
            await connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
        assert not await schema_is_current(engine)
    finally:
        await engine.dispose()


async def test_the_child_process_migrates_a_new_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert await migrate_in_child_process(url)
    engine = create_engine(url)
    try:
        assert await schema_is_current(engine)
    finally:
        await engine.dispose()


async def test_no_child_process_for_an_in_memory_database() -> None:
    """It would migrate a database of its own; the caller migrates in process instead (as
    after any failure of the child, so that the real error is reported)."""
    assert not await migrate_in_child_process("sqlite://")


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def test_a_started_server_has_not_loaded_what_its_configuration_does_not_use(
    tmp_path: Path,
) -> None:
    """Start-up (a schema already current), then one login: the moment the benchmark calls
    idle."""
    database = tmp_path / "db.sqlite"
    asyncio.run(_migrate(f"sqlite:///{database}"))
    (tmp_path / "storage").mkdir()
    write_config(
        tmp_path / "config",
        [user_doc("admin", "admin-pass", ["systemAdmin"]), collection_doc("db")],
    )
    answer = subprocess.run(
        [
            sys.executable,
            "-c",
            STARTED,
            f"--db-url=sqlite:///{database}",
            f"--storage-url={(tmp_path / 'storage').as_uri()}",
            f"--config-local-path={tmp_path / 'config'}",
            f"--jwt-secret-key={JWT_SECRET}",
            "--log-level=warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    result = json.loads(answer.stdout.strip().splitlines()[-1])
    assert result["status"] == 200
    loaded = {name.split(".")[0] for name in result["modules"]}
    assert "backup_repository" in loaded
    assert sorted(loaded & set(UNUSED)) == []
    assert sorted(set(result["modules"]) & set(SUBCOMMAND_ONLY)) == []
    assert sorted(set(result["modules"]) & set(UNUSED_MODULES)) == []


def test_every_subcommand_is_found_by_its_name() -> None:
    """The server's group imports a subcommand when it is asked for; each name leads to the
    click command of that name."""
    context = click.Context(main)
    assert main.list_commands(context) == sorted(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        command = main.get_command(context, name)
        assert isinstance(command, click.Command)
        assert command.name == name
    assert main.get_command(context, "no-such-command") is None


def test_the_unused_libraries_are_installed() -> None:
    """The guard above means something only while they could be imported at all."""
    assert [name for name in UNUSED if importlib.util.find_spec(name) is None] == []


async def test_a_sender_without_a_client_makes_one_for_its_first_webhook() -> None:
    """The server passes no HTTP client (httpx is loaded at the first webhook)."""
    event = NotificationEvent(
        id="evt-memory",
        type=EventType.TEST,
        condition="test",
        collection="db",
        occurred_at=datetime(2026, 12, 5, 6, 15, tzinfo=UTC),
        summary="test",
        facts={},
    )
    with recorder() as receiver:
        hook = Channel(
            name="hook",
            type=ChannelType.WEBHOOK,
            webhook=WebhookTarget(
                url=receiver.url("/hook"),
                signing_secret="whsec-memory-0123456789",
                timeout=timedelta(seconds=5),
            ),
        )
        sender = build_sender(server_name="backups.test")
        try:
            await sender.send(hook, event)
            await sender.send(hook, event)
        finally:
            await sender.aclose()
            await sender.aclose()
        assert [request.path for request in receiver.taken()] == ["/hook", "/hook"]
