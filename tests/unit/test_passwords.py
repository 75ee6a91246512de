"""Password hashes: the reference project's test vectors, its stored form, and bounded
hashing off the event loop."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import threading

import pytest
from argon2 import PasswordHasher as _Argon2
from argon2 import Type

from backup_repository.domain.errors import TooBusy
from backup_repository.domain.password_format import (
    InvalidPasswordHash,
    decode_stored_hash,
    encode_for_storage,
)
from backup_repository.services.passwords import HASH_NICENESS, PasswordHasher
from support import eventually

# From the reference project's examples (docs/security.md, "Passwords").
ADMIN = (
    "JGFyZ29uMmlkJHY9MTkkbT02NTUzNix0PTEscD00JHpuVy9IT2Y4Q3RkdStvNSttYlR2REE9PSRaZlVpRGl2QWV2T2"
    "RZNndKYWJBb0FQdmM1a1hsemxDNkg2OFY2dGVmNUY0PQ=="
)
TEST = (
    "JGFyZ29uMmlkJHY9MTkkbT02NTUzNix0PTEscD00JERzUzlPTzFOc0JVREhvR1RmQ01wemc9PSRrcXh4bFliS3A4Um"
    "81MXZEb0FQaUdBeFhkNTgrY1ZzdERyZ3p3NG16bjFVPQ=="
)


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher(2)


@pytest.mark.parametrize(("stored", "password"), [(ADMIN, "admin"), (TEST, "test")])
def test_reference_vectors_verify(hasher: PasswordHasher, stored: str, password: str) -> None:
    assert hasher.verify_sync(stored, password)
    assert not hasher.verify_sync(stored, password + "x")
    assert not hasher.verify_sync(stored, "")


def test_reference_vectors_carry_padding_that_is_removed() -> None:
    phc = base64.b64decode(ADMIN).decode()
    assert phc.startswith("$argon2id$v=19$m=65536,t=1,p=4$")
    assert "=$" in phc
    assert phc.endswith("=")
    decoded = decode_stored_hash(ADMIN)
    salt, digest = decoded.split("$")[-2:]
    assert not salt.endswith("=")
    assert not digest.endswith("=")


def test_bare_phc_string_is_accepted(hasher: PasswordHasher) -> None:
    bare = base64.b64decode(TEST).decode()
    assert hasher.verify_sync(bare, "test")


def test_new_hashes_use_the_reference_form_and_parameters(hasher: PasswordHasher) -> None:
    stored = hasher.hash_sync("s3cret")
    phc = base64.b64decode(stored).decode()
    assert phc.startswith("$argon2id$v=19$m=65536,t=1,p=4$")
    assert hasher.verify_sync(stored, "s3cret")
    assert encode_for_storage(phc) == stored
    assert hasher.hash_sync("s3cret") != stored  # a fresh salt every time


@pytest.mark.parametrize(
    "stored",
    ["", "hashed", "JGFyZ29u", base64.b64encode(b"$2b$12$bcrypt-hash").decode(), "$argon2id$x"],
)
def test_unusable_stored_values_never_verify(hasher: PasswordHasher, stored: str) -> None:
    assert not hasher.verify_sync(stored, "hashed")
    assert not hasher.verify_sync(stored, "")


@pytest.mark.parametrize("stored", ["hashed", "not base64 !", base64.b64encode(b"plain").decode()])
def test_decode_rejects_what_is_not_argon2(stored: str) -> None:
    with pytest.raises(InvalidPasswordHash):
        decode_stored_hash(stored)


def test_missing_user_is_checked_against_a_decoy(hasher: PasswordHasher) -> None:
    assert not hasher.verify_sync(None, "anything")


async def test_hashing_runs_off_the_event_loop_with_bounded_concurrency() -> None:
    hasher = PasswordHasher(2)
    seen: set[str] = set()
    peak = 0
    loop_thread = threading.current_thread().name

    async def watch() -> None:
        nonlocal peak
        while True:
            names = {t.name for t in threading.enumerate() if t.name.startswith("argon2")}
            seen.update(names)
            peak = max(peak, len(names))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(hasher.verify(ADMIN, "admin") for _ in range(8)))
    finally:
        watcher.cancel()
        hasher.close()
    assert all(results)
    # The loop kept running (the watcher observed worker threads) and never more than two
    # hashing threads existed.
    assert seen, "no hashing thread was observed: hashing ran on the event loop"
    assert loop_thread not in seen
    assert 1 <= peak <= 2


@pytest.fixture(scope="module")
def slow_hash() -> str:
    """A hash whose check takes several times the reference's (time_cost=8), so that a
    second check really waits for the one thread."""
    return PasswordHasher(1, time_cost=8).hash_sync("slow")


async def test_checks_beyond_the_queue_limit_are_refused_at_once(slow_hash: str) -> None:
    hasher = PasswordHasher(1, max_waiting=1)
    try:
        admitted = [asyncio.create_task(hasher.verify(slow_hash, "slow")) for _ in range(2)]
        await asyncio.sleep(0)  # both are admitted: one hashing, one waiting
        assert hasher.pending == 2
        with pytest.raises(TooBusy) as refused:
            await hasher.verify(slow_hash, "slow")
        assert 1 <= refused.value.retry_after <= 60
        assert "try again" in refused.value.message
        assert await asyncio.gather(*admitted) == [True, True]
        # The slots are free again once the hashes are done.
        assert hasher.pending == 0
        assert await hasher.verify(slow_hash, "slow")
    finally:
        hasher.close()


async def test_a_zero_queue_admits_only_the_running_checks(slow_hash: str) -> None:
    hasher = PasswordHasher(2, max_waiting=0)
    try:
        admitted = [asyncio.create_task(hasher.verify(slow_hash, "slow")) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(TooBusy):
            await hasher.verify(slow_hash, "slow")
        assert await asyncio.gather(*admitted) == [True, True]
    finally:
        hasher.close()


async def test_a_check_abandoned_by_its_caller_holds_its_slot_until_it_ends(
    slow_hash: str,
) -> None:
    hasher = PasswordHasher(1, max_waiting=0)
    try:
        task = asyncio.create_task(hasher.verify(slow_hash, "slow"))
        await asyncio.sleep(0.05)  # the hash is running in its thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The thread is still busy with it: another check is refused, not run beside it.
        assert hasher.pending == 1
        with pytest.raises(TooBusy):
            await hasher.verify(slow_hash, "slow")
        await eventually(lambda: hasher.pending == 0, within=10)
        assert await hasher.verify(slow_hash, "slow")
    finally:
        hasher.close()


async def test_without_a_limit_every_check_waits_its_turn(slow_hash: str) -> None:
    hasher = PasswordHasher(1)
    try:
        assert (
            await asyncio.gather(*(hasher.verify(slow_hash, "slow") for _ in range(4)))
            == [True] * 4
        )
    finally:
        hasher.close()


def _nice(thread_id: int) -> int:
    """The nice value of one thread of this process, as the kernel reports it."""
    with open(f"/proc/self/task/{thread_id}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the nice value of a thread is Linux's"
)


@linux_only
async def test_hashing_threads_run_at_a_lower_priority_than_the_event_loop() -> None:
    loop_thread = threading.get_native_id()
    before = _nice(loop_thread)
    hasher = PasswordHasher(2)
    try:
        await asyncio.gather(hasher.verify(ADMIN, "admin"), hasher.verify(TEST, "test"))
        pool = [t.native_id for t in threading.enumerate() if t.name.startswith("argon2")]
        assert pool, "no hashing thread found"
        assert {_nice(tid) for tid in pool if tid is not None} == {min(19, before + HASH_NICENESS)}
        # The caller's thread (the event loop's) keeps its priority.
        assert _nice(loop_thread) == before
    finally:
        hasher.close()


@linux_only
async def test_lanes_started_by_libargon2_inherit_the_lower_priority(slow_hash: str) -> None:
    """The hash's own threads (one per lane) are started from a pool thread and inherit its
    nice value: every thread of the process that is neither a Python thread nor at the
    server's priority is caught while a slow hash runs."""
    base = _nice(threading.get_native_id())
    lowered = min(19, base + HASH_NICENESS)
    hasher = PasswordHasher(1)
    lanes: set[int] = set()
    others: set[int] = set()
    try:
        task = asyncio.create_task(hasher.verify(slow_hash, "slow"))
        while not task.done():
            python = {t.native_id for t in threading.enumerate()}
            for entry in os.listdir("/proc/self/task"):
                tid = int(entry)
                if tid in python:
                    continue
                try:
                    nice = _nice(tid)
                except (OSError, ValueError):
                    continue  # ended meanwhile
                (lanes if nice == lowered else others).add(tid)
            await asyncio.sleep(0.001)
        assert await task
    finally:
        hasher.close()
    assert lanes, "no lane thread of libargon2 was seen"
    assert not others & lanes


@linux_only
async def test_a_niceness_of_zero_leaves_the_priority_alone() -> None:
    before = _nice(threading.get_native_id())
    hasher = PasswordHasher(1, niceness=0)
    try:
        assert await hasher.verify(TEST, "test")
        pool = [t.native_id for t in threading.enumerate() if t.name.startswith("argon2")]
        assert pool
        assert {_nice(tid) for tid in pool if tid is not None} == {before}
    finally:
        hasher.close()


# -- the pool's kept buffers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "password", "expected"),
    [
        (ADMIN, "admin", True),
        (ADMIN, "admin" + "x", False),
        (TEST, "test", True),
        (TEST, "", False),
        (None, "anything", False),  # the decoy
        ("hashed", "hashed", False),  # unusable: the decoy
    ],
)
async def test_checks_in_the_pool_answer_as_the_library_does(
    hasher: PasswordHasher, stored: str | None, password: str, expected: bool
) -> None:
    assert await hasher.verify(stored, password) is expected
    assert hasher.verify_sync(stored, password) is expected


async def test_hashes_in_other_forms_are_checked_by_the_library() -> None:
    """argon2i, another memory cost, a bare PHC string with non-ASCII password: the same
    answers through the pool as without it."""
    hasher = PasswordHasher(1)
    other = _Argon2(time_cost=2, memory_cost=8192, parallelism=2, type=Type.I)
    small = _Argon2(time_cost=1, memory_cost=1024, parallelism=1, type=Type.ID)
    try:
        for phc, password in ((other.hash("pässwort"), "pässwort"),
                              (small.hash("pässwort"), "pässwort")):  # fmt: skip
            stored = encode_for_storage(phc)
            assert await hasher.verify(stored, password)
            assert not await hasher.verify(stored, password + "!")
    finally:
        hasher.close()


async def test_a_burst_of_checks_reuses_one_buffer_per_thread_and_gives_it_back() -> None:
    hasher = PasswordHasher(1)
    try:
        results = await asyncio.gather(*(hasher.verify(TEST, "test") for _ in range(4)))
        assert results == [True] * 4
        # Four checks queued behind one thread: one buffer mapped, used four times ...
        assert hasher._buffers.allocations == 1
        # ... and given back to the system once nothing waits.
        await eventually(lambda: hasher.pending == 0 and not hasher._buffers._free, within=5)
        assert await hasher.verify(TEST, "wrong") is False
        assert hasher._buffers.allocations == 2
    finally:
        hasher.close()
