"""``python -m backup_repository.db.migrate``: bring the database whose URL is read from
standard input to the newest schema revision, then exit (0: done). The server's start-up
checks run it as a child process when the schema is behind, so that Alembic is never
loaded into the server itself (:func:`backup_repository.db.engine.migrate_in_child_process`).
Nothing is printed: on failure the server migrates in its own process and reports that
error."""

from __future__ import annotations

import asyncio
import sys

from backup_repository.db.engine import create_engine, migrate


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def main() -> int:
    url = sys.stdin.read().strip()
    if not url:
        return 2
    try:
        asyncio.run(_migrate(url))
    except Exception:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
