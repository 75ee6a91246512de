"""``INSERT ... ON CONFLICT``, the one statement whose construct differs between the
databases (the PostgreSQL and SQLite dialects each have their own ``insert``).

The dialect's module is imported when its first statement is built, not when this module is
imported: a server loads only the dialect of its own database (the PostgreSQL dialect is
about 2.4 MiB of resident memory a SQLite server does without; its engine loads the SQLite
dialect anyway, and a PostgreSQL server's engine the PostgreSQL one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Table

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert


def insert_on_conflict(dialect_name: str, table: Table) -> PostgresInsert | SqliteInsert:
    """An INSERT into ``table`` that can take ``on_conflict_do_nothing`` or
    ``on_conflict_do_update`` (and read ``excluded``), in the syntax of the database whose
    dialect is named ``dialect_name`` (``engine.dialect.name``)."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgres_insert

        return postgres_insert(table)
    if dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise ValueError(f"no INSERT ... ON CONFLICT for the {dialect_name!r} dialect")
