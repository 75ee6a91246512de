"""docs/database.md describes every table the server creates, and every column of each: a
table or column added by a migration without its description fails here."""

from __future__ import annotations

import re
from pathlib import Path

from backup_repository.db.tables import metadata

DOC = Path(__file__).resolve().parents[2] / "docs" / "database.md"


def sections() -> dict[str, str]:
    """Each ``### `table``` section of the doc, by table name."""
    text = DOC.read_text()
    found: dict[str, str] = {}
    for match in re.finditer(r"^### `(\w+)`\n(.*?)(?=^##|\Z)", text, re.M | re.S):
        found[match[1]] = match[2]
    return found


def test_every_table_has_a_section_and_a_row_in_the_overview() -> None:
    documented = sections()
    tables = set(metadata.tables) | {"alembic_version"}
    assert tables == set(documented), (tables, set(documented))
    overview = DOC.read_text().split("## Tables", 1)[1].split("### ", 1)[0]
    for table in tables:
        assert f"| `{table}` |" in overview, table


def test_every_column_is_described() -> None:
    documented = sections()
    for name, table in metadata.tables.items():
        for column in table.columns:
            assert f"`{column.name}`" in documented[name], (name, column.name)
