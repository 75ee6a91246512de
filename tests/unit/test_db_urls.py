from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from backup_repository.db.urls import (
    build_postgres_url,
    is_sqlite,
    normalize_database_url,
    render_url_safely,
)

AWKWARD_PASSWORD = "p@ss:w/rd %?#&=+'\"\\ żółw"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///data/backup-repository.db", "sqlite+aiosqlite:///data/backup-repository.db"),
        ("sqlite:///./br.db", "sqlite+aiosqlite:///./br.db"),
        ("sqlite:////var/lib/br/db.sqlite", "sqlite+aiosqlite:////var/lib/br/db.sqlite"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+pysqlite:///br.db", "sqlite+aiosqlite:///br.db"),
        ("sqlite+aiosqlite:////srv/br.db", "sqlite+aiosqlite:////srv/br.db"),
        ("  sqlite:///br.db\n", "sqlite+aiosqlite:///br.db"),
    ],
)
def test_sqlite_urls_get_the_async_driver(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


def test_relative_and_absolute_sqlite_paths_stay_what_they_were() -> None:
    assert make_url(normalize_database_url("sqlite:///rel/br.db")).database == "rel/br.db"
    assert make_url(normalize_database_url("sqlite:////abs/br.db")).database == "/abs/br.db"
    spaced = make_url(normalize_database_url("sqlite:////srv/my backups/br.db"))
    assert spaced.database == "/srv/my backups/br.db"


def test_sqlite_memory_url() -> None:
    url = make_url(normalize_database_url("sqlite:///:memory:"))
    assert url.drivername == "sqlite+aiosqlite"
    assert url.database == ":memory:"


@pytest.mark.parametrize(
    "given",
    [
        "postgresql://br:secret@db.example.org:5433/backups",
        "postgres://br:secret@db.example.org:5433/backups",
        "postgresql+psycopg://br:secret@db.example.org:5433/backups",
        "postgresql+psycopg2://br:secret@db.example.org:5433/backups",
        "postgresql+pg8000://br:secret@db.example.org:5433/backups",
        "postgresql+asyncpg://br:secret@db.example.org:5433/backups",
    ],
)
def test_postgres_urls_get_asyncpg(given: str) -> None:
    assert (
        normalize_database_url(given)
        == "postgresql+asyncpg://br:secret@db.example.org:5433/backups"
    )


def test_postgres_url_without_credentials_or_port() -> None:
    assert normalize_database_url("postgresql://db/backups") == "postgresql+asyncpg://db/backups"


def test_libpq_options_are_renamed_for_asyncpg() -> None:
    url = make_url(normalize_database_url("postgresql://u@h/db?sslmode=require&connect_timeout=5"))
    assert dict(url.query) == {"ssl": "require", "timeout": "5"}


def test_other_query_options_are_kept() -> None:
    url = make_url(normalize_database_url("postgresql://u@h/db?ssl=verify-full&command_timeout=9"))
    assert dict(url.query) == {"ssl": "verify-full", "command_timeout": "9"}


def test_libpq_and_asyncpg_spelling_of_one_option_together_are_refused() -> None:
    with pytest.raises(ValueError, match="both 'sslmode' and 'ssl'"):
        normalize_database_url("postgresql://u@h/db?sslmode=require&ssl=disable")


def test_special_characters_in_a_password_survive_normalization() -> None:
    url = build_postgres_url("db", 5432, "br", AWKWARD_PASSWORD, "backups")
    plain = url.replace("postgresql+asyncpg://", "postgresql://")
    normalized = make_url(normalize_database_url(plain))
    assert normalized.password == AWKWARD_PASSWORD
    assert normalized.username == "br"
    assert normalized.host == "db"
    assert normalized.database == "backups"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///br.db",
        "sqlite://",
        "postgresql://u:p%40ss@h:5432/db?sslmode=require",
        "postgres://h/db",
    ],
)
def test_normalization_is_idempotent(url: str) -> None:
    once = normalize_database_url(url)
    assert normalize_database_url(once) == once


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("mysql://u:p@h/db", "database 'mysql' is not supported"),
        ("mssql+pyodbc://h/db", "database 'mssql' is not supported"),
        ("oracle://h/db", "database 'oracle' is not supported"),
        ("just some words", "cannot parse"),
        ("/var/lib/br.db", "cannot parse"),
        ("sqlite+pysqlcipher:///br.db", "SQLite driver 'pysqlcipher' is not supported"),
        ("postgresql+nosuchdriver://h/db", "PostgreSQL driver 'nosuchdriver' is not supported"),
        ("sqlite://somehost/br.db", "names a file, not a server"),
        ("sqlite://user:pw@/br.db", "names a file, not a server"),
    ],
)
def test_unsupported_urls_are_refused_with_the_accepted_forms(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        normalize_database_url(url)
    message = str(info.value)
    assert "sqlite:///relative/path.db" in message
    assert "postgresql://user:password@host:5432/database" in message


def test_error_messages_do_not_show_passwords() -> None:
    with pytest.raises(ValueError, match="not supported") as info:
        normalize_database_url("mysql://user:hunter2@h/db")
    assert "hunter2" not in str(info.value)


def test_build_postgres_url_quotes_user_and_password() -> None:
    url = build_postgres_url("db.internal", 6432, "back@up:user/x", AWKWARD_PASSWORD, "br db")
    assert url.startswith("postgresql+asyncpg://")
    assert AWKWARD_PASSWORD not in url
    parsed = make_url(url)
    assert parsed.username == "back@up:user/x"
    assert parsed.password == AWKWARD_PASSWORD
    assert parsed.host == "db.internal"
    assert parsed.port == 6432
    assert parsed.database == "br db"
    assert normalize_database_url(url) == url


def test_build_postgres_url_leaves_out_empty_credentials() -> None:
    assert build_postgres_url("h", 5432, "", "", "db") == "postgresql+asyncpg://h:5432/db"
    assert build_postgres_url("h", 5432, "br", "", "db") == "postgresql+asyncpg://br@h:5432/db"


def test_build_postgres_url_with_ipv6_host() -> None:
    parsed = make_url(build_postgres_url("::1", 5432, "br", "pw", "db"))
    assert parsed.host == "::1"
    assert parsed.port == 5432


def test_build_postgres_url_with_unix_socket_folder() -> None:
    parsed = make_url(build_postgres_url("/run/postgresql", 5432, "br", "", "db"))
    assert parsed.host is None
    assert dict(parsed.query) == {"host": "/run/postgresql", "port": "5432"}
    assert parsed.database == "db"


@pytest.mark.parametrize(
    ("host", "port", "name", "reason"),
    [
        ("", 5432, "db", "host name is empty"),
        ("h", 0, "db", "outside 1-65535"),
        ("h", 65536, "db", "outside 1-65535"),
        ("h", 5432, "", "name is empty"),
    ],
)
def test_build_postgres_url_refuses_incomplete_settings(
    host: str, port: int, name: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        build_postgres_url(host, port, "br", "pw", name)


def test_render_url_safely_hides_the_password() -> None:
    url = build_postgres_url("h", 5432, "br", AWKWARD_PASSWORD, "db")
    rendered = render_url_safely(url)
    assert rendered == "postgresql+asyncpg://br:***@h:5432/db"


def test_render_url_safely_keeps_urls_without_password() -> None:
    assert render_url_safely("sqlite:////var/lib/br.db") == "sqlite:////var/lib/br.db"


def test_render_url_safely_does_not_echo_unparsable_text() -> None:
    assert render_url_safely("hunter2") == "<unparsable database URL>"


def test_is_sqlite() -> None:
    assert is_sqlite("sqlite:///x.db")
    assert is_sqlite("sqlite+aiosqlite://")
    assert not is_sqlite("postgresql://h/db")
