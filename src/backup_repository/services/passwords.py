"""Argon2id password hashing and checking, in the reference project's stored form (see
``domain.password_format``).

Each hash takes 64 MiB and a few tens of milliseconds of CPU, so hashing runs in a dedicated
thread pool whose size bounds both: a burst of logins queues instead of exhausting memory. The
queue is bounded too (``max_waiting``): past it a login is refused at once with ``TooBusy``
rather than waiting behind a flood, which would only make every login slow.

The pool's threads run at a lower CPU priority than the rest of the server (Linux: their
nice value is raised by ``HASH_NICENESS``; the threads libargon2 starts for the lanes of a
hash inherit it). A hash is a few tens of milliseconds of pure CPU on every core it can get;
at the same priority a stream of logins takes the cores from the event loop, and every
cheap request (a whoami, a listing, a download) waits behind it. At a lower priority the
scheduler runs the event loop first whenever it has work, and the hashes take the rest.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from backup_repository.domain.errors import TooBusy
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

T = TypeVar("T")

# How much lower the hashing threads' priority is than the server's (added to the nice
# value, at most 19): at 10 a thread weighs about a tenth of one at the server's priority.
HASH_NICENESS = 10

# Retry-After bounds for a refused login: at least a second, at most a minute.
MIN_RETRY_SECONDS = 1
MAX_RETRY_SECONDS = 60


class PasswordHasher:
    def __init__(
        self,
        max_concurrent: int = 2,
        *,
        max_waiting: int | None = None,
        time_cost: int = 1,
        memory_cost: int = 65536,
        parallelism: int = 4,
        niceness: int = HASH_NICENESS,
    ) -> None:
        self._argon2 = _Argon2(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=max_concurrent,
            thread_name_prefix="argon2",
            initializer=lower_thread_priority,
            initargs=(niceness,),
        )
        self._concurrency = max_concurrent
        # Hashes running or waiting for a thread; None: the queue is unbounded.
        self._capacity = None if max_waiting is None else max_concurrent + max_waiting
        self._pending = 0
        self._lock = threading.Lock()
        # A running average of one hash's duration, for the Retry-After of a refusal.
        self._seconds_per_hash = 0.1
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
        """``verify_sync`` in the pool; raises ``TooBusy`` when the queue is full."""
        return await self._run(self.verify_sync, stored, password)

    async def hash(self, password: str) -> str:
        """``hash_sync`` in the pool; raises ``TooBusy`` when the queue is full."""
        return await self._run(self.hash_sync, password)

    @property
    def pending(self) -> int:
        """Hashes running or waiting for a thread."""
        with self._lock:
            return self._pending

    async def _run(self, work: Callable[..., T], *args: object) -> T:
        with self._lock:
            if self._capacity is not None and self._pending >= self._capacity:
                retry = self._retry_after()
                raise TooBusy(
                    f"too many logins are waiting for a password check, try again in {retry} s",
                    retry,
                )
            self._pending += 1
        try:
            future = self._pool.submit(self._timed, work, *args)
        except BaseException:
            self._release()
            raise
        # The slot is given back when the hash ends, not when the caller stops waiting: a
        # client that disconnects does not stop its hash, which still holds a thread.
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _timed(self, work: Callable[..., T], *args: object) -> T:
        started = time.perf_counter()
        try:
            return work(*args)
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self._seconds_per_hash = 0.8 * self._seconds_per_hash + 0.2 * elapsed

    def _release(self, _future: Future[Any] | None = None) -> None:
        with self._lock:
            self._pending -= 1

    def _retry_after(self) -> int:
        """Seconds until the queue ahead has drained (called with the lock held)."""
        drain = self._pending * self._seconds_per_hash / self._concurrency
        return min(MAX_RETRY_SECONDS, max(MIN_RETRY_SECONDS, math.ceil(drain)))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def lower_thread_priority(niceness: int) -> None:
    """Raise the calling thread's nice value by ``niceness`` (at most to 19).

    Only on Linux, where the nice value belongs to a thread (elsewhere ``setpriority`` with
    this id would lower the whole process, or fail). Raising it needs no privilege; if the
    system refuses anyway, the thread keeps the server's priority."""
    if niceness <= 0 or sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + niceness))
    except OSError:
        return
