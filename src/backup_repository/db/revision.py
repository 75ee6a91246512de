"""Write a new migration: ``python -m backup_repository.db.revision "add a column"``.

Autogenerate compares the models in ``tables.py`` with a database migrated to the newest
revision. By default that database is a throw-away SQLite file, so no server is needed;
``--db-url`` compares against PostgreSQL instead (recommended for PostgreSQL-only types).
The new file goes to ``migrations/versions/`` and is numbered after the newest one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.operations.ops import MigrationScript
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection

from backup_repository.db.engine import (
    MIGRATIONS_DIR,
    alembic_config,
    config_path,
    create_engine,
    migrate,
)
from backup_repository.db.urls import render_url_safely


def next_revision_id(config: Config) -> str:
    """The number after the highest numeric revision id, zero-padded to four digits."""
    numbers = [
        int(script.revision)
        for script in ScriptDirectory.from_config(config).walk_revisions()
        if script.revision.isdigit()
    ]
    return f"{max(numbers, default=0) + 1:04d}"


async def create_revision(
    message: str,
    db_url: str,
    *,
    autogenerate: bool = True,
    output_dir: Path | None = None,
) -> Path | None:
    """Write a revision and return its path; None when autogenerate found no change.

    ``output_dir`` writes the file somewhere other than the package's ``versions/`` folder
    (the existing revisions are still read from there).
    """
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        async with engine.connect() as connection:
            return await connection.run_sync(_write_revision, message, autogenerate, output_dir)
    finally:
        await engine.dispose()


def _write_revision(
    connection: Connection, message: str, autogenerate: bool, output_dir: Path | None
) -> Path | None:
    config = alembic_config(connection)
    _add_ruff_hooks(config)
    if autogenerate:
        config.attributes["process_revision_directives"] = _skip_empty
    version_path = None
    if output_dir is not None:
        version_path = str(output_dir)
        locations = [config_path(MIGRATIONS_DIR / "versions"), config_path(output_dir)]
        config.set_main_option("version_locations", os.pathsep.join(locations))
    result = command.revision(
        config,
        message,
        autogenerate=autogenerate,
        rev_id=next_revision_id(config),
        version_path=version_path,
    )
    scripts: Iterable[Script | None] = result if isinstance(result, list) else [result]
    paths = [Path(script.path) for script in scripts if script is not None]
    return paths[0] if paths else None


def _skip_empty(
    context: MigrationContext,
    revision: str | Iterable[str | None] | Iterable[str],
    directives: list[MigrationScript],
) -> None:
    """Write nothing when autogenerate found no difference (an empty migration is noise)."""
    if all(
        upgrade_ops.is_empty() for script in directives for upgrade_ops in script.upgrade_ops_list
    ):
        directives[:] = []


def _add_ruff_hooks(config: Config) -> None:
    """Let ruff tidy the generated file (imports, formatting) when it is installed."""
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        return
    config.set_section_option("post_write_hooks", "hooks", "ruff_fix, ruff_format")
    for name, options in (
        ("ruff_fix", "check --fix --quiet REVISION_SCRIPT_FILENAME"),
        ("ruff_format", "format --quiet REVISION_SCRIPT_FILENAME"),
    ):
        config.set_section_option("post_write_hooks", f"{name}.type", "exec")
        config.set_section_option("post_write_hooks", f"{name}.executable", ruff)
        config.set_section_option("post_write_hooks", f"{name}.options", options)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backup_repository.db.revision",
        description="Write a new Alembic migration for the models in backup_repository.db.tables.",
    )
    parser.add_argument("message", help='what the migration does, e.g. "add versions table"')
    parser.add_argument(
        "--db-url",
        help="compare against this database (migrated to head first) "
        "instead of a temporary SQLite file",
    )
    parser.add_argument(
        "--empty", action="store_true", help="write an empty revision to fill in by hand"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="br-revision-") as scratch:
        db_url = args.db_url or f"sqlite:///{Path(scratch) / 'autogenerate.db'}"
        path = asyncio.run(create_revision(args.message, db_url, autogenerate=not args.empty))
    if path is None:
        print(f"No changes between the models and {render_url_safely(db_url)}; nothing written.")
        return 1
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
