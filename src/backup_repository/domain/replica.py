"""The identity of a replica in the lock and lease tables.

Every upload lock and maintenance lease a server takes names its owner
``<tag>/<process>:<hold>``: the replica's tag (its ``--replica-id``, by default the host
name), a random part for this life of the process, and a random part for the hold. A
replica that is killed and started again under the same id recognises what its previous
life held by the tag and frees it at start-up, instead of leaving the collection locked
until the lease runs out. Owners written by anything else (the ``import-reference``
command) contain no ``/`` and are never freed that way.

Pure rules, no I/O: the host name is passed in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final

# A replica id is a host name or a DNS name (a Kubernetes pod name is one).
MAX_REPLICA_ID_LENGTH: Final = 253
# Owners are stored in 64 characters: the tag, "/", 8 hex digits for the process, ":" and
# up to 16 hex digits for the hold leave 38 for the tag.
MAX_TAG_LENGTH: Final = 36
_TAG_HASH_DIGITS: Final = 12
# Separates the tag from the rest of an owner; no replica id contains it.
OWNER_SEPARATOR: Final = "/"

_VALID_ID: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_NOT_ALLOWED: Final = re.compile(r"[^A-Za-z0-9._-]+")


def check_replica_id(text: str) -> str:
    """``text`` when it is a usable replica id; ValueError saying what is allowed otherwise."""
    if not 1 <= len(text) <= MAX_REPLICA_ID_LENGTH or _VALID_ID.fullmatch(text) is None:
        raise ValueError(
            f"{text[:80]!r} is not a replica id: use 1 to {MAX_REPLICA_ID_LENGTH} letters, "
            "digits, '.', '_' or '-', starting and ending with a letter or digit (the pod "
            "or host name is the usual choice)"
        )
    return text


def replica_id_from_hostname(hostname: str) -> str:
    """The default replica id: the host name, with characters a replica id cannot hold
    replaced by ``-`` (a host name almost never has any)."""
    cleaned = _NOT_ALLOWED.sub("-", hostname).strip("._-")[:MAX_REPLICA_ID_LENGTH]
    return cleaned.strip("._-") or "server"


def lease_tag(replica_id: str) -> str:
    """What owners carry of the replica id: the id itself when it is short enough, else its
    beginning and a digest of the whole (``~`` never occurs in an id, so a digest tag never
    equals another replica's id)."""
    if len(replica_id) <= MAX_TAG_LENGTH:
        return replica_id
    digest = hashlib.sha256(replica_id.encode()).hexdigest()[:_TAG_HASH_DIGITS]
    return f"{replica_id[: MAX_TAG_LENGTH - _TAG_HASH_DIGITS - 1]}~{digest}"


@dataclass(frozen=True)
class ReplicaIdentity:
    """A replica id and this process's life of it."""

    replica_id: str
    life: str

    @classmethod
    def start(cls, replica_id: str) -> ReplicaIdentity:
        """A new life of ``replica_id`` (random, so no two processes share one)."""
        return cls(check_replica_id(replica_id), secrets.token_hex(4))

    @property
    def tag(self) -> str:
        return lease_tag(self.replica_id)

    @property
    def instance(self) -> str:
        """The part every owner this process writes starts with: ``<tag>/<life>``."""
        return f"{self.tag}{OWNER_SEPARATOR}{self.life}"
