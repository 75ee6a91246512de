"""The view models of the web console's tokens and administration pages
(services/console_tokens.py, services/console_admin.py), built from real parts as the
composition root builds them: the filesystem provider, the database on SQLite and
PostgreSQL, the auth and audit services. The pages themselves are tested in a browser
(tests/ui)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.config.providers import open_provider
from backup_repository.db.audit import SqlAuditRepository
from backup_repository.db.repositories import SqlDatabaseHealth, SqlSessionRepository
from backup_repository.domain.errors import AuthenticationFailed, Forbidden, InvalidInput
from backup_repository.services.audit import AuditLog, AuditService
from backup_repository.services.auth import AuthContext, AuthService
from backup_repository.services.console_admin import (
    AuditForm,
    ConsoleAdminService,
    audit_filters,
)
from backup_repository.services.console_tokens import (
    ConsoleTokenService,
    GrantableCollection,
    ScopeGrant,
    TokenForm,
    lifetime_choices,
)
from backup_repository.services.events import Action, Outcome
from backup_repository.services.health import ConfigurationProviderValidator, DbValidator
from backup_repository.services.passwords import PasswordHasher
from backup_repository.services.resolver import CachingResolver
from backup_repository.services.tokens import TokenCodec
from support import JWT_SECRET, collection_doc, make_settings, write_config

LIFETIME = timedelta(days=30)
# Audit entries per page in these tests (the console shows AUDIT_PAGE_SIZE).
PAGE = 3
IP = "192.0.2.7"
PASSWORDS = {"admin": "admin-pass", "alice": "alice-pass", "alice$ci": "ci-pass"}


_CHEAP = PasswordHasher(1, time_cost=1, memory_cost=1024, parallelism=1)


def user(name: str, roles: list[str], keys: dict[str, str] | None = None) -> dict[str, Any]:
    """A user whose password hashes take a millisecond to check, not the reference's
    64 MiB: these tests log in dozens of times. ``keys``: access key -> collection it may
    upload to."""
    spec: dict[str, Any] = {
        "email": f"{name}@example.org",
        "password": _CHEAP.hash_sync(PASSWORDS[name]),
        "roles": roles,
    }
    if keys:
        spec["accessKeys"] = [
            {
                "name": key,
                "password": _CHEAP.hash_sync(PASSWORDS[f"{name}${key}"]),
                "objects": [{"name": target, "type": "collection", "roles": ["backupUploader"]}],
            }
            for key, target in keys.items()
        ]
    return {
        "apiVersion": "backups.riotkit.org/v1alpha1",
        "kind": "BackupUser",
        "metadata": {"name": name},
        "spec": spec,
    }


def documents() -> list[dict[str, Any]]:
    db = collection_doc(
        "db",
        acl=[{"name": "alice", "type": "user", "roles": ["backupUploader", "backupDownloader"]}],
    )
    files = collection_doc(
        "files", acl=[{"name": "alice", "type": "user", "roles": ["backupDownloader"]}]
    )
    files["spec"].update(
        strategyName="fifo-plus-older",
        strategySpec={"keepLastOlderNotMoreThan": "30d", "maxOlderCopies": 2},
        windows=[{"from": "0 1 * * 0", "duration": "3h"}],
    )
    return [
        user("admin", ["systemAdmin"]),
        user("alice", [], keys={"ci": "db"}),
        db,
        files,
        collection_doc("mail"),
    ]


@dataclass
class World:
    auth: AuthService
    tokens: ConsoleTokenService
    admin: ConsoleAdminService

    async def session(self, login: str, password: str) -> AuthContext:
        issued, _ = await self.auth.login(login, password, IP)
        return await self.auth.authenticate(issued.token, IP)


@pytest.fixture
async def world(tmp_path: Path, database_url: str, db_engine: AsyncEngine) -> AsyncIterator[World]:
    write_config(tmp_path / "config", documents())
    (tmp_path / "config" / "broken.yaml").write_text(
        "apiVersion: backups.riotkit.org/v1alpha1\nkind: BackupCollection\n"
        "metadata: {name: broken}\nspec: {filenameTemplate: 'b-${version}', maxBackupsCount: 1,"
        " maxOneVersionSize: lots, maxCollectionSize: 1M}\n"
    )
    settings = make_settings(tmp_path, database_url)
    provider = open_provider(
        settings.provider, settings.config_local_path, settings.namespace, settings.kubeconfig
    )
    hasher = PasswordHasher(1, time_cost=1, memory_cost=1024, parallelism=1)
    audit = SqlAuditRepository(db_engine)
    await provider.start()
    try:
        auth = AuthService(
            config=provider,
            sessions=SqlSessionRepository(db_engine),
            hasher=hasher,
            tokens=TokenCodec(JWT_SECRET, LIFETIME),
            resolver=CachingResolver(),
            events=AuditLog(audit),
        )
        yield World(
            auth,
            ConsoleTokenService(auth, provider, LIFETIME),
            ConsoleAdminService(
                provider,
                AuditService(audit),
                [
                    DbValidator(SqlDatabaseHealth(db_engine)),
                    ConfigurationProviderValidator(provider),
                ],
                5.0,
                audit_page_size=PAGE,
            ),
        )
    finally:
        await provider.close()
        hasher.close()


async def test_tokens_page_offers_only_held_roles_and_creates_narrow_tokens(world: World) -> None:
    alice = await world.session("alice", "alice-pass")
    assert world.tokens.grantable(alice) == (
        GrantableCollection("db", ("backupUploader", "backupDownloader"), single_use=True),
        GrantableCollection("files", ("backupDownloader",), single_use=False),
    )
    # An access key narrows what is offered, as it narrows what it may do.
    key = await world.session("alice$ci", "ci-pass")
    assert world.tokens.grantable(key) == (
        GrantableCollection("db", ("backupUploader",), single_use=True),
    )

    created = await world.tokens.create(
        alice,
        TokenForm(
            password="alice-pass",
            lifetime="3600",
            scope=["backupDownloader:files", "backupDownloader:db"],
            description="  nightly   restore test ",
        ),
        IP,
    )
    assert set(created.scope) == {
        ScopeGrant("files", "backupDownloader"),
        ScopeGrant("db", "backupDownloader"),
    }
    assert timedelta(minutes=59) < created.expires_at - datetime.now(UTC) <= timedelta(hours=1)
    ctx = await world.auth.authenticate(created.token, IP)
    assert {g.name for g in ctx.principal.scope} == {"db", "files"}

    single = await world.tokens.create(alice, TokenForm(password="alice-pass", single_use="db"), IP)
    assert single.single_use_collection == "db"

    page = await world.tokens.page(alice)
    by_id = {s.id: s for s in page.sessions}
    assert by_id[alice.session.id].current
    assert by_id[created.session_id].description == "Web console token: nightly restore test"
    assert set(by_id[created.session_id].scope) == set(created.scope)
    assert by_id[single.session_id].single_use_collection == "db"
    assert not any(s.current for s in page.sessions if s.id != alice.session.id)
    assert page.login == "alice"
    assert (await world.tokens.page(key)).login == "alice$ci"


REFUSED = [
    (TokenForm(password="alice-pass"), "choose at least one role"),
    (TokenForm(password="alice-pass", scope=["backupUploader:files"]), "not a role you hold"),
    (TokenForm(password="alice-pass", scope=["backupUploader:mail"]), "not a role you hold"),
    (TokenForm(password="alice-pass", scope=["nonsense"]), "not one of the offered"),
    (TokenForm(password="alice-pass", single_use="files"), "may not upload to 'files'"),
    (TokenForm(password="alice-pass", single_use="nope"), "may not upload to 'nope'"),
    (TokenForm(password="alice-pass", scope=["backupUploader:db"], lifetime="soon"), "lifetime:"),
    (
        TokenForm(password="alice-pass", scope=["backupUploader:db"], lifetime="400d"),
        "must not be longer",
    ),
    (TokenForm(scope=["backupUploader:db"]), "type your password"),
]


async def test_refused_tokens_say_why_and_revocation(world: World) -> None:
    alice = await world.session("alice", "alice-pass")
    for form, error in REFUSED:
        with pytest.raises(InvalidInput, match=error):
            await world.tokens.create(alice, form, IP)
    with pytest.raises(AuthenticationFailed):
        await world.tokens.create(
            alice, TokenForm(password="wrong", scope=["backupUploader:db"]), IP
        )
    other = await world.session("alice", "alice-pass")
    assert not await world.tokens.revoke(alice, other.session.id, IP)
    with pytest.raises(AuthenticationFailed):
        await world.auth.authenticate(other.token, IP)
    # Someone else's session is not alice's to revoke.
    admin = await world.session("admin", "admin-pass")
    with pytest.raises(Forbidden):
        await world.tokens.revoke(alice, admin.session.id, IP)
    # Her own current one is, and the page is told so (it logs her out).
    assert await world.tokens.revoke(alice, alice.session.id, IP)


def test_lifetimes_offered_never_exceed_the_servers() -> None:
    assert [c.seconds for c in lifetime_choices(timedelta(days=2))] == [3600, 86400, 172800]
    assert lifetime_choices(timedelta(days=2))[-1].label == "2 days (the server's longest)"
    assert [c.label for c in lifetime_choices(timedelta(hours=1))] == [
        "1 hour (the server's longest)"
    ]


async def test_administration_pages(world: World) -> None:
    for login, password in (("alice", "alice-pass"), ("alice$ci", "ci-pass")):
        ctx = await world.session(login, password)
        with pytest.raises(Forbidden):
            world.admin.configuration(ctx)
        with pytest.raises(Forbidden):
            await world.admin.readiness(ctx)
        with pytest.raises(Forbidden):
            await world.admin.audit(ctx, AuditForm())
        # Even a bad filter is 403 for them, not 400: the form is read after the check.
        with pytest.raises(Forbidden):
            await world.admin.audit(ctx, AuditForm(action="nope"))

    admin = await world.session("admin", "admin-pass")
    view = world.admin.configuration(admin)
    assert [u.name for u in view.users] == ["admin", "alice"]
    alice = view.users[1]
    assert alice.access_keys[0].name == "ci"
    assert alice.access_keys[0].grants[0].roles == ("backupUploader",)
    assert [c.name for c in view.collections] == ["db", "files", "mail"]
    files = view.collections[1]
    assert files.strategy == "fifo-plus-older"
    assert files.strategy_settings == ("keepLastOlderNotMoreThan: 720h", "maxOlderCopies: 2")
    assert (files.windows[0].cron, files.windows[0].duration) == ("0 1 * * 0", "3h")
    assert [(p.kind, p.name, p.field) for p in view.problems] == [
        ("BackupCollection", "broken", "spec.maxOneVersionSize")
    ]
    text = repr(view)
    assert "argon2" not in text.lower()
    assert "JGFyZ29uMmlk" not in text  # base64 of "$argon2id", the stored form

    readiness = await world.admin.readiness(admin)
    assert [c.name for c in readiness.checks] == ["DbValidator", "ConfigurationProviderValidator"]
    assert readiness.ready

    for _ in range(PAGE + 2):
        with pytest.raises(AuthenticationFailed):
            await world.auth.login("alice", "wrong", IP)
    failures = AuditForm(action="login", outcome="failure")
    first = await world.admin.audit(admin, failures)
    assert len(first.entries) == PAGE
    assert first.next_cursor is not None
    second = await world.admin.audit(admin, failures, first.next_cursor)
    assert len(second.entries) == 2
    assert second.next_cursor is None
    assert {e.user for e in first.entries + second.entries} == {"alice"}
    mine = await world.admin.audit(admin, AuditForm(user="admin"))
    assert [(e.action, e.outcome) for e in mine.entries] == [("login", "success")]
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert not (await world.admin.audit(admin, AuditForm(since=future))).entries
    assert (await world.admin.audit(admin, AuditForm(until=future))).entries


def test_audit_form_values() -> None:
    filters = audit_filters(
        AuditForm(
            action="upload",
            outcome="failure",
            user=" alice ",
            since="2026-12-05T10:00",
            until="2026-12-05T12:00+01:00",
        )
    )
    assert filters.action is Action.UPLOAD
    assert filters.outcome is Outcome.FAILURE
    assert filters.user == "alice"
    assert filters.collection is None
    assert filters.since == datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    assert filters.until == datetime(2026, 12, 5, 11, 0, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="event type: unknown 'uploads'"):
        audit_filters(AuditForm(action="uploads"))
    with pytest.raises(InvalidInput, match="outcome"):
        audit_filters(AuditForm(outcome="maybe"))
    with pytest.raises(InvalidInput, match="from: not a date and time"):
        audit_filters(AuditForm(since="yesterday"))
