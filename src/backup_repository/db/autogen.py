"""How Alembic compares the models with a database: shared by ``migrations/env.py`` (new
revisions) and the test that plays ``alembic check``, so both see the same differences."""

from __future__ import annotations

from typing import Any, Literal

from alembic.autogenerate.api import AutogenContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, DefaultClause

from backup_repository.db.tables import UTCDateTime


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write our column types as plain SQLAlchemy types, so that revisions do not import
    application code that may change after they were written."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def compare_server_default(
    context: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    """Recognise a plain string default the database reports back as the same SQL literal;
    leave every other comparison to Alembic (``None``).

    Alembic's SQLite comparison unquotes only non-empty literals, so without this an
    empty-string default (reflected as ``('')``) would look modified on every run.
    """
    if inspected_default is None or not isinstance(metadata_default, DefaultClause):
        return None
    if not isinstance(metadata_default.arg, str):
        return None
    reflected = inspected_default.strip()
    while reflected.startswith("(") and reflected.endswith(")"):
        reflected = reflected[1:-1].strip()
    literal = "'" + metadata_default.arg.replace("'", "''") + "'"
    return False if reflected == literal else None


def autogenerate_options() -> dict[str, Any]:
    """Options for ``EnvironmentContext.configure`` / ``MigrationContext.configure``."""
    return {
        "compare_type": True,
        "compare_server_default": compare_server_default,
        "render_item": render_item,
        # SQLite can alter little in place; batch mode copies the table when needed.
        "render_as_batch": True,
    }
