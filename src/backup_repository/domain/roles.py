"""Roles and what they include (docs/security.md, "Authorization")."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Role(StrEnum):
    SYSTEM_ADMIN = "systemAdmin"
    USER_MANAGER = "userManager"
    COLLECTION_MANAGER = "collectionManager"
    BACKUP_UPLOADER = "backupUploader"
    BACKUP_DOWNLOADER = "backupDownloader"
    UPLOADS_ANYTIME = "uploadsAnytime"


# Spellings found in the reference project's objects, mapped to the canonical role.
_ALIASES: dict[str, Role] = {"usersManager": Role.USER_MANAGER}

_INCLUDES: dict[Role, frozenset[Role]] = {
    Role.SYSTEM_ADMIN: frozenset({Role.USER_MANAGER, Role.COLLECTION_MANAGER}),
    Role.COLLECTION_MANAGER: frozenset(
        {Role.BACKUP_UPLOADER, Role.BACKUP_DOWNLOADER, Role.UPLOADS_ANYTIME}
    ),
}


class UnknownRole(ValueError):
    def __init__(self, name: str) -> None:
        known = ", ".join(sorted([r.value for r in Role] + list(_ALIASES)))
        super().__init__(f"unknown role {name!r} (known roles: {known})")
        self.name = name


def parse_role(name: str) -> Role:
    """Return the canonical role for a name as written in a configuration object."""
    if name in _ALIASES:
        return _ALIASES[name]
    try:
        return Role(name)
    except ValueError:
        raise UnknownRole(name) from None


def parse_roles(names: Iterable[str]) -> frozenset[Role]:
    return frozenset(parse_role(n) for n in names)


def expand(roles: Iterable[Role]) -> frozenset[Role]:
    """All roles granted by ``roles``, following the inclusions transitively."""
    result: set[Role] = set()
    pending = list(roles)
    while pending:
        role = pending.pop()
        if role in result:
            continue
        result.add(role)
        pending.extend(_INCLUDES.get(role, ()))
    return frozenset(result)


def grants(roles: Iterable[Role], needed: Role) -> bool:
    """True when holding ``roles`` gives ``needed`` (directly or by inclusion)."""
    return needed in expand(roles)
