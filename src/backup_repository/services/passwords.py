"""Argon2id password hashing and checking, in the reference project's stored form (see
``domain.password_format``).

Each hash takes 64 MiB and a few tens of milliseconds of CPU, so hashing runs in a dedicated
thread pool whose size bounds both: a burst of logins queues instead of exhausting memory.
"""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from backup_repository.domain.password_format import (
    InvalidPasswordHash,
    decode_stored_hash,
    encode_for_storage,
)

REFERENCE_PARAMETERS = {
    "time_cost": 1,
    "memory_cost": 65536,
    "parallelism": 4,
    "hash_len": 32,
    "salt_len": 16,
}


class PasswordHasher:
    def __init__(
        self,
        max_concurrent: int = 2,
        *,
        time_cost: int = 1,
        memory_cost: int = 65536,
        parallelism: int = 4,
    ) -> None:
        self._argon2 = _Argon2(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="argon2")
        # A hash of a random password, verified against when the user does not exist, so
        # that unknown and known user names take the same time.
        self._decoy = self._argon2.hash(secrets.token_hex(16))

    def hash_sync(self, password: str) -> str:
        """A new hash in the stored form (base64 of the PHC string)."""
        return encode_for_storage(self._argon2.hash(password))

    def verify_sync(self, stored: str | None, password: str) -> bool:
        """Constant-time check; an unusable stored value is checked against a decoy so the
        time taken does not reveal whether the account exists."""
        try:
            phc = decode_stored_hash(stored) if stored else self._decoy
        except InvalidPasswordHash:
            phc, stored = self._decoy, None
        try:
            matched = self._argon2.verify(phc, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return bool(matched) and stored is not None

    async def verify(self, stored: str | None, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.verify_sync, stored, password)

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.hash_sync, password)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
