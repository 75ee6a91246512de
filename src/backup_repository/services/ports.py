"""The small interfaces services depend on. Implementations live in ``config/`` and ``db/``
and are wired together in the composition root (``http/app.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from backup_repository.domain.identity import Collection, User


@dataclass(frozen=True)
class ConfigProblem:
    """A configuration object that could not be used, and why.

    ``source`` names the file (or the Kubernetes resource) it came from, ``kind`` and
    ``name`` the object when they could be read, ``field`` the dotted path of the offending
    field (empty for whole-document problems such as bad YAML).
    """

    source: str
    message: str
    kind: str = ""
    name: str = ""
    field: str = ""

    def __str__(self) -> str:
        what = f"{self.kind}/{self.name}" if self.kind or self.name else "document"
        where = f" field {self.field}" if self.field else ""
        return f"{self.source}: {what}{where}: {self.message}"


@dataclass(frozen=True)
class ConfigSnapshot:
    """Every usable object at one moment. Broken objects are left out (so they refuse every
    request) and described in ``problems``."""

    users: Mapping[str, User] = field(default_factory=dict)
    collections: Mapping[str, Collection] = field(default_factory=dict)
    problems: tuple[ConfigProblem, ...] = ()
    # False when the provider itself could not be read (folder missing, API unreachable).
    usable: bool = True
    unusable_reason: str = ""


class ConfigurationProvider(Protocol):
    async def start(self) -> None:
        """Load the objects once and begin following changes."""

    async def close(self) -> None: ...

    def snapshot(self) -> ConfigSnapshot:
        """The current objects; cheap, never does I/O."""


@dataclass(frozen=True)
class SessionRecord:
    """An issued token ("granted access"): ``id`` is the SHA-256 hex of the token."""

    id: str
    user: str
    access_key_name: str
    requester_ip: str
    description: str
    expires_at: datetime
    deactivated: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


class SessionRepository(Protocol):
    async def add(self, session: SessionRecord) -> None: ...

    async def get(self, session_id: str) -> SessionRecord | None: ...

    async def list_for_user(self, user: str) -> list[SessionRecord]:
        """Sessions of a user, newest first."""

    async def deactivate(self, session_id: str) -> bool:
        """Mark a session revoked; False when no such session exists."""


class DatabaseHealth(Protocol):
    async def ping(self) -> None:
        """Raise when the database cannot answer a trivial query."""


class HostResolver(Protocol):
    async def resolve(self, host: str) -> frozenset[str]:
        """Addresses a host name resolves to; empty when it does not resolve."""
