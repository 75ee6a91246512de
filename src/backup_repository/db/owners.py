"""Matching the owners of upload locks and maintenance leases by the replica that wrote
them (``domain/replica.py`` describes the ``<tag>/<process>:<hold>`` form)."""

from __future__ import annotations

from sqlalchemy import Column, ColumnElement

from backup_repository.domain.replica import OWNER_SEPARATOR


def server_owner(column: Column[str | None], tag: str | None) -> ColumnElement[bool]:
    """Owners written by the replica ``tag`` (any of its lives), or by any server when
    None. ``_`` and ``%`` in a tag are matched literally, not as LIKE wildcards."""
    if tag is None:
        return column.contains(OWNER_SEPARATOR, autoescape=True)
    return column.startswith(f"{tag}{OWNER_SEPARATOR}", autoescape=True)
