"""Database URLs: accept what operators type, hand SQLAlchemy the async driver we ship.

Operators configure either ``--db-url`` (any SQLite or PostgreSQL URL, with or without a
driver name) or the reference's ``--db-hostname/--db-port/...`` set, which
:func:`build_postgres_url` turns into a URL. Both end up in :func:`normalize_database_url`,
which picks ``aiosqlite`` or ``asyncpg`` so the rest of the code never deals with drivers.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+asyncpg"

ACCEPTED_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:// (in memory), "
    "postgresql://user:password@host:5432/database (also postgres://, "
    "postgresql+asyncpg://, postgresql+psycopg://, postgresql+psycopg2://)"
)

# Drivers a URL may name; whatever was named, we connect through our async driver.
_SQLITE_DRIVERS = frozenset({"", "pysqlite", "aiosqlite"})
_POSTGRES_BACKENDS = frozenset({"postgresql", "postgres"})
_POSTGRES_DRIVERS = frozenset(
    {"", "asyncpg", "psycopg", "psycopg2", "psycopg2cffi", "psycopg_async", "pg8000"}
)

# libpq spellings of connection options (what the Go reference and psql users write)
# mapped to the keyword asyncpg.connect() expects.
_LIBPQ_TO_ASYNCPG = {"sslmode": "ssl", "connect_timeout": "timeout"}


def normalize_database_url(url: str) -> str:
    """Return ``url`` rewritten to use the async driver of its database.

    ``sqlite:`` URLs get ``sqlite+aiosqlite``, PostgreSQL URLs (``postgresql:``,
    ``postgres:``, any ``postgresql+<driver>:``) get ``postgresql+asyncpg``; libpq query
    options ``sslmode`` and ``connect_timeout`` are renamed to asyncpg's ``ssl`` and
    ``timeout``. Raises :class:`ValueError` for anything else.
    """
    parsed = _parse(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        if driver not in _SQLITE_DRIVERS:
            raise _unsupported(f"SQLite driver {driver!r} is not supported")
        if parsed.host or parsed.port or parsed.username or parsed.password:
            raise _unsupported(
                "a SQLite URL names a file, not a server: use three slashes for a relative "
                "path (sqlite:///data/db.sqlite) and four for an absolute one"
            )
        return parsed.set(drivername=SQLITE_DRIVER).render_as_string(hide_password=False)
    if backend in _POSTGRES_BACKENDS:
        if driver not in _POSTGRES_DRIVERS:
            raise _unsupported(f"PostgreSQL driver {driver!r} is not supported")
        query = dict(parsed.query)
        for libpq_name, asyncpg_name in _LIBPQ_TO_ASYNCPG.items():
            if libpq_name not in query:
                continue
            if asyncpg_name in query:
                raise _unsupported(
                    f"the URL sets both {libpq_name!r} and {asyncpg_name!r}; keep one"
                )
            query[asyncpg_name] = query.pop(libpq_name)
        return parsed.set(drivername=POSTGRES_DRIVER, query=query).render_as_string(
            hide_password=False
        )
    raise _unsupported(f"database {backend!r} is not supported")


def build_postgres_url(host: str, port: int, user: str, password: str, name: str) -> str:
    """Build a PostgreSQL URL from the reference's separate ``--db-*`` settings.

    User and password may contain any character (they are quoted). An empty user or
    password is left out, so libpq-style defaults (trust, peer) keep working. A host that
    starts with ``/`` is a Unix socket directory and is passed as the ``host`` query option.
    """
    if not host:
        raise ValueError("database host name is empty")
    if not 0 < port < 65536:
        raise ValueError(f"database port {port} is outside 1-65535")
    if not name:
        raise ValueError("database name is empty")
    socket_dir = host.startswith("/")
    url = URL.create(
        POSTGRES_DRIVER,
        username=user or None,
        password=password or None,
        host=None if socket_dir else host,
        port=None if socket_dir else port,
        database=name,
        query={"host": host, "port": str(port)} if socket_dir else {},
    )
    return url.render_as_string(hide_password=False)


def render_url_safely(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and error messages.

    A URL that cannot be parsed is not echoed at all (it might be a password pasted into
    the wrong place).
    """
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparsable database URL>"


def is_sqlite(url: str) -> bool:
    """True when ``url`` (normalized or not) points at SQLite."""
    return _parse(url).get_backend_name() == "sqlite"


def _parse(url: str) -> URL:
    text = url.strip()
    if not text:
        raise _unsupported("the database URL is empty")
    try:
        return make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise _unsupported(f"cannot parse database URL {render_url_safely(text)!r}") from exc


def _unsupported(reason: str) -> ValueError:
    return ValueError(f"{reason}; accepted forms: {ACCEPTED_FORMS}")
