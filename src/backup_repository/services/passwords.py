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

A check in the pool hashes into a 64 MiB buffer that the pool keeps while more checks are
waiting, and gives back to the system once none is: a fresh allocation costs 16,384 page
faults (a third of the CPU of a check) every time, which a stream of logins then no longer
pays. libargon2 wipes the buffer before handing it back; the comparison of the result is in
constant time; a hash in any other form than the usual Argon2id is checked as before.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import math
import mmap
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from argon2 import PasswordHasher as _Argon2
from argon2 import Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import ARGON2_VERSION, core, ffi

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
        self._buffers = _KeptBuffers()

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

    def _verify_pooled(self, stored: str | None, password: str) -> bool:
        """``verify_sync`` on a pool thread, hashing into a kept buffer where it can."""
        try:
            phc = decode_stored_hash(stored) if stored else self._decoy
        except InvalidPasswordHash:
            phc, stored = self._decoy, None
        matched = self._buffers.verify(phc, password)
        if matched is None:  # not a form the kept buffers take: the library's own check
            try:
                matched = bool(self._argon2.verify(phc, password))
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False
        return matched and stored is not None

    async def verify(self, stored: str | None, password: str) -> bool:
        """``verify_sync`` in the pool; raises ``TooBusy`` when the queue is full."""
        return await self._run(self._verify_pooled, stored, password)

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
            idle = self._pending == 0
        if idle:
            # No check is running or waiting: the memory goes back to the system (a check
            # admitted meanwhile takes a new buffer or one not given back yet).
            self._buffers.drop_free()

    def _retry_after(self) -> int:
        """Seconds until the queue ahead has drained (called with the lock held)."""
        drain = self._pending * self._seconds_per_hash / self._concurrency
        return min(MAX_RETRY_SECONDS, max(MIN_RETRY_SECONDS, math.ceil(drain)))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._buffers.drop_free()


_USUAL_PREFIX = f"$argon2id$v={ARGON2_VERSION}$"
_ALLOCATION_ERROR = -22  # ARGON2_MEMORY_ALLOCATION_ERROR


def _b64(text: str) -> bytes:
    """Base64 without padding, as in a PHC string."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


class _KeptBuffers:
    """Buffers for libargon2's memory, kept between checks (see the module's description).

    libargon2 asks for its memory through a callback on the thread that runs the check; the
    thread's buffer is found through a thread-local. A buffer is in use by one check at a
    time: taken from the free list before the check and put back after it, under a lock, so
    ``drop_free`` never closes one that a check is using."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []
        self._local = threading.local()
        self.allocations = 0  # buffers mapped so far (tests: reuse in a burst)
        self.hashes = 0  # times libargon2 asked for memory: Argon2 runs (tests: the decoy)
        # An exception in the callback answers libargon2 "memory allocation error".
        self._allocate = ffi.callback(
            "int(uint8_t **, size_t)", self._on_allocate, error=_ALLOCATION_ERROR
        )
        self._free_cbk = ffi.callback("void(uint8_t *, size_t)", self._on_free)

    def verify(self, phc: str, password: str) -> bool | None:
        """Whether ``password`` matches ``phc``; None when ``phc`` is not a usual Argon2id
        hash (the caller checks it another way)."""
        if not phc.startswith(_USUAL_PREFIX):
            return None
        try:
            parameters = extract_parameters(phc)
            salt_text, digest_text = phc.split("$")[4:6]
            salt, digest = _b64(salt_text), _b64(digest_text)
        except (InvalidHashError, ValueError, binascii.Error):
            return None
        secret = password.encode("utf-8")
        out = ffi.new("uint8_t[]", len(digest))
        pwd = ffi.new("uint8_t[]", secret)
        salt_c = ffi.new("uint8_t[]", salt)
        context = ffi.new(
            "argon2_context *",
            {
                "out": out,
                "outlen": len(digest),
                "pwd": pwd,
                "pwdlen": len(secret),
                "salt": salt_c,
                "saltlen": len(salt),
                "secret": ffi.NULL,
                "secretlen": 0,
                "ad": ffi.NULL,
                "adlen": 0,
                "t_cost": parameters.time_cost,
                "m_cost": parameters.memory_cost,
                "lanes": parameters.parallelism,
                "threads": parameters.parallelism,
                "version": ARGON2_VERSION,
                "allocate_cbk": self._allocate,
                "free_cbk": self._free_cbk,
                "flags": 0,
            },
        )
        try:
            error = core(context, Type.ID.value)
        finally:
            self._put_back()
        if error == _ALLOCATION_ERROR:
            return None
        if error != 0:  # parameters libargon2 refuses: never a match
            return False
        return hmac.compare_digest(ffi.buffer(out, len(digest))[:], digest)

    def _on_allocate(self, memory: Any, size: int) -> int:
        with self._lock:
            self.hashes += 1
            found = next((b for b in self._free if len(b) == size), None)
            if found is not None:
                self._free.remove(found)
        try:
            if found is None:
                found = mmap.mmap(-1, size)
                self.allocations += 1
        except (OSError, ValueError):
            return _ALLOCATION_ERROR
        view = ffi.from_buffer(found)
        self._local.held = (found, view)
        memory[0] = ffi.cast("uint8_t *", view)
        return 0

    def _on_free(self, _memory: Any, _size: int) -> None:
        """libargon2 has wiped the buffer; it goes back to the free list after the check."""

    def _put_back(self) -> None:
        held = getattr(self._local, "held", None)
        if held is None:
            return
        self._local.held = None
        found, view = held
        ffi.release(view)
        with self._lock:
            self._free.append(found)

    def drop_free(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for buffer in free:
            buffer.close()


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
