"""A stored version as the quota and rotation rules see it (its number, size and time), how
a download names one (``7``, ``v7``, ``latest``) and which of its bytes a Range asks for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from backup_repository.domain.errors import NotFound, RangeNotSatisfiable


@dataclass(frozen=True)
class StoredVersion:
    """One committed version of a collection. Numbers grow with every upload and are never
    reused, so a higher number is a newer version."""

    number: int
    size: int
    created_at: datetime  # timezone-aware UTC
    # Set by a collection manager: kept outside of the rotation rules (domain/rotation.py),
    # still counted against the collection's limits (domain/quota.py).
    protected: bool = False


VERSION_NOT_FOUND = "cannot find specified version"


def parse_version_ref(text: str) -> int | None:
    """``7``, ``v7`` or ``latest`` (None); anything else is NotFound."""
    ref = text.strip()
    if ref == "latest":
        return None
    if ref[:1] in {"v", "V"}:
        ref = ref[1:]
    if not ref.isascii() or not ref.isdigit() or len(ref) > 9:
        raise NotFound(VERSION_NOT_FOUND)
    return int(ref)


def resolve_range(byte_range: tuple[int | None, int | None], size: int) -> tuple[int, int]:
    """``[start, end)`` of a version of ``size`` bytes for a parsed ``bytes=first-last``
    (either may be None); raises RangeNotSatisfiable."""
    first, last = byte_range
    if first is None:
        if last is None or last == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - last), size
    if first >= size or (last is not None and last < first):
        raise RangeNotSatisfiable(size)
    end = size if last is None else min(last + 1, size)
    return first, end
