"""Alembic environment. Run through ``backup_repository.db.engine.migrate()`` (at start-up)
or ``python -m backup_repository.db.revision`` (new revisions); both hand over an open
connection, so there is no ``alembic.ini`` and no URL to configure here."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from backup_repository.db.autogen import autogenerate_options
from backup_repository.db.tables import metadata


def run_migrations() -> None:
    config = context.config
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported")
    connection = config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "no database connection given: run migrations through "
            "backup_repository.db.engine.migrate() or `python -m backup_repository.db.revision`"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        process_revision_directives=config.attributes.get("process_revision_directives"),
        **autogenerate_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
