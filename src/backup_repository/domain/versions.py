"""A stored version as the quota and rotation rules see it: its number, size and time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class StoredVersion:
    """One committed version of a collection. Numbers grow with every upload and are never
    reused, so a higher number is a newer version."""

    number: int
    size: int
    created_at: datetime  # timezone-aware UTC
