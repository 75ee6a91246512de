"""What the database layer imports: SQLAlchemy's async engine without its ORM (and the
ordinary import when that way fails), and only the dialect of the database in use."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from backup_repository.db import engine as db_engine
from backup_repository.db.dialects import insert_on_conflict
from backup_repository.db.tables import collection_states

# Creates a SQLite engine in a fresh interpreter and queries it, then imports the public
# package of the async engine and prints what was loaded before.
ENGINE_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    import asyncio, json, sys

    {prelude}

    from backup_repository.db.engine import AsyncEngine, create_engine


    async def run():
        engine = create_engine("sqlite://")
        try:
            async with engine.connect() as connection:
                return (await connection.exec_driver_sql("SELECT 1")).scalar_one()
        finally:
            await engine.dispose()


    count = asyncio.run(run())
    before = sorted(sys.modules)
    import sqlalchemy.ext.asyncio as public

    print(json.dumps({{
        "count": count,
        "orm_before": "sqlalchemy.orm" in before,
        "postgresql_before": "sqlalchemy.dialects.postgresql" in before,
        "same_classes": public.AsyncEngine is AsyncEngine,
    }}))
    """
)

# Makes the package look missing to the loader, as a SQLAlchemy laid out differently would.
WITHOUT_THE_PACKAGE = textwrap.dedent(
    """
    import importlib.util

    _find_spec = importlib.util.find_spec
    importlib.util.find_spec = (
        lambda name, *args: None if name == "sqlalchemy.ext.asyncio" else _find_spec(name, *args)
    )
    """
)


def _run(prelude: str) -> tuple[dict[str, object], str]:
    answer = subprocess.run(
        [sys.executable, "-c", ENGINE_IN_A_FRESH_PROCESS.format(prelude=prelude)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    return json.loads(answer.stdout.strip().splitlines()[-1]), answer.stderr


def test_the_async_engine_is_loaded_without_the_orm() -> None:
    """Queries work, neither the ORM nor the PostgreSQL dialect was imported, and the
    public package imported later has the same classes."""
    result, stderr = _run("")
    assert result == {
        "count": 1,
        "orm_before": False,
        "postgresql_before": False,
        "same_classes": True,
    }
    assert "could not load" not in stderr


def test_when_the_engine_cannot_be_loaded_alone_the_package_is_imported_as_usual() -> None:
    result, stderr = _run(WITHOUT_THE_PACKAGE)
    assert result["count"] == 1
    assert result["orm_before"] is True
    assert result["same_classes"] is True
    assert "could not load SQLAlchemy's async engine without its ORM" in stderr


def test_an_already_imported_package_is_used_as_it_is() -> None:
    import sqlalchemy.ext.asyncio as public

    module = db_engine._load_async_engine_module()
    assert module.AsyncEngine is public.AsyncEngine
    assert module.create_async_engine is public.create_async_engine


@pytest.mark.parametrize(
    ("name", "dialect"), [("postgresql", postgresql.dialect()), ("sqlite", sqlite.dialect())]
)
def test_insert_on_conflict_in_each_databases_syntax(name: str, dialect: object) -> None:
    statement = insert_on_conflict(name, collection_states).on_conflict_do_nothing()
    sql = str(statement.compile(dialect=dialect))  # type: ignore[arg-type]
    assert sql.startswith("INSERT INTO collection_states")
    assert sql.endswith("ON CONFLICT DO NOTHING")


def test_insert_on_conflict_refuses_another_database() -> None:
    with pytest.raises(ValueError, match="'mysql'"):
        insert_on_conflict("mysql", collection_states)
