"""A login for a user name that does not exist costs the same Argon2 work as a wrong
password for one that does, so the time taken does not tell which names exist.

The work is counted, not timed: a real :class:`PasswordHasher` whose Argon2 hasher (the
argon2-cffi object it verifies with) counts the verifications it really runs, plus the
checks its pool runs itself into kept buffers (counted when libargon2 asks for the memory
of one). The authentication service is built from real parts, as the composition root
builds it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import argon2
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backup_repository.config.providers import open_provider
from backup_repository.db.repositories import SqlSessionRepository
from backup_repository.domain.errors import AuthenticationFailed
from backup_repository.services.auth import AuthService
from backup_repository.services.passwords import PasswordHasher
from backup_repository.services.resolver import CachingResolver
from backup_repository.services.tokens import TokenCodec
from support import JWT_SECRET, default_documents, make_settings, write_config


class CountingArgon2(argon2.PasswordHasher):
    """argon2-cffi's hasher, counting the verifications it runs."""

    verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verifications += 1
        return super().verify(hash, password)


class CountingHasher(PasswordHasher):
    """The project's hasher (pool, decoy, stored form) over a counting Argon2."""

    def __init__(self) -> None:
        super().__init__(1, time_cost=1, memory_cost=1024, parallelism=1)
        assert isinstance(self._argon2, argon2.PasswordHasher), "the hasher's Argon2 moved"
        self.argon2 = CountingArgon2(
            time_cost=1, memory_cost=1024, parallelism=1, hash_len=32, salt_len=16
        )
        self._argon2 = self.argon2

    @property
    def verifications(self) -> int:
        return self.argon2.verifications + self._buffers.hashes


@dataclass
class World:
    auth: AuthService
    hasher: CountingHasher


@pytest.fixture
async def world(tmp_path: Path, database_url: str, db_engine: AsyncEngine) -> AsyncIterator[World]:
    write_config(tmp_path / "config", default_documents())
    settings = make_settings(tmp_path, database_url)
    provider = open_provider(
        settings.provider, settings.config_local_path, settings.namespace, settings.kubeconfig
    )
    hasher = CountingHasher()
    await provider.start()
    try:
        auth = AuthService(
            config=provider,
            sessions=SqlSessionRepository(db_engine),
            hasher=hasher,
            tokens=TokenCodec(JWT_SECRET, settings.jwt_lifetime),
            resolver=CachingResolver(),
        )
        yield World(auth, hasher)
    finally:
        await provider.close()
        hasher.close()


async def attempt(auth: AuthService, username: str, password: str) -> None:
    with pytest.raises(AuthenticationFailed):
        await auth.login(username, password, "127.0.0.1", None, None, None)


async def test_unknown_user_costs_one_argon2_verification_like_a_wrong_password(
    world: World,
) -> None:
    # The counter sees real work: a good login verifies once.
    await world.auth.login("admin", "admin-pass", "127.0.0.1", None, None, None)
    assert world.hasher.verifications == 1
    await attempt(world.auth, "admin", "wrong-pass")
    assert world.hasher.verifications == 2
    await attempt(world.auth, "nobody", "wrong-pass")
    assert world.hasher.verifications == 3, "an unknown user name skipped the Argon2 work"
    await attempt(world.auth, "admin$no-such-key", "wrong-pass")
    assert world.hasher.verifications == 4, "an unknown access key skipped the Argon2 work"


def test_the_decoy_is_a_real_argon2_verification() -> None:
    hasher = CountingHasher()
    try:
        assert not hasher.verify_sync(None, "anything")
        assert not hasher.verify_sync("not a stored hash", "anything")
        assert hasher.verifications == 2
    finally:
        hasher.close()
