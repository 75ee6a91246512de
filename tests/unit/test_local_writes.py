"""file:// writes (storage/local.py) on real files: one thread does the whole write (no hop
through an executor before or after the chunks), the object appears only after the fsync of
the file, the rename and the fsync of the folder, and every failure leaves no staging file
and never removes a file the write did not create; a delete is an unlink in a worker thread,
and every other call of the file:// store (storage/filesystem.py) is one trip to a worker
thread (a read: one per chunk)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import secrets
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from backup_repository.storage.base import StorageUnavailable
from backup_repository.storage.factory import open_blob_store
from backup_repository.storage.local import put_local

KiB = 1024


async def chunks_of(data: bytes, size: int = 80 * KiB) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]
        await asyncio.sleep(0)  # the network's pace


def staging_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*#*"))


def file_names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if path.is_file())


class Counted:
    """Counts the hops through the loop's executor and the callbacks other threads hand to
    the loop (each one a write to its wake-up pipe and a turn of the loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.executor = 0
        self.wakeups = 0
        run_in_executor = loop.run_in_executor
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counted_executor(*args: Any) -> Any:
            self.executor += 1
            return run_in_executor(*args)

        def counted_wakeup(callback: Callable[..., object], *args: Any, **kwargs: Any) -> Any:
            self.wakeups += 1
            return call_soon_threadsafe(callback, *args, **kwargs)

        loop.run_in_executor = counted_executor  # type: ignore[method-assign,assignment]
        loop.call_soon_threadsafe = counted_wakeup  # type: ignore[method-assign,assignment]


async def test_a_write_takes_no_executor_hop_and_starts_no_thread(tmp_path: Path) -> None:
    # Before, the staging file was opened and then fsynced and renamed through the default
    # executor (two more wake-ups of the loop per upload), and every write started a thread.
    data = os.urandom(1024 * KiB + 321)  # a sequential 1 MiB upload: 13 chunks
    digest = hashlib.sha256()
    await put_local("c/warm-up", tmp_path / "c" / "warm-up", chunks_of(b"warm"))
    started = threading.Thread.start
    starts: list[threading.Thread] = []

    def counted_start(thread: threading.Thread) -> None:
        starts.append(thread)
        started(thread)

    counted = Counted(asyncio.get_running_loop())
    threading.Thread.start = counted_start  # type: ignore[method-assign,assignment]
    try:
        written = await put_local("c/f", tmp_path / "c" / "f", chunks_of(data), digest.update)
    finally:
        threading.Thread.start = started  # type: ignore[method-assign]
    assert written == len(data)
    assert (tmp_path / "c" / "f").read_bytes() == data
    assert digest.digest() == hashlib.sha256(data).digest()
    assert counted.executor == 0
    # The end of the write, and at most one per wait for room (13 chunks, 8 in flight).
    assert counted.wakeups <= 1 + 13 // 4
    assert starts == []  # the previous write's thread does this one


async def test_a_large_write_goes_to_the_file_in_batches_of_one_writev_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, every chunk was a hand-over to the thread and a write() of its own.
    data = os.urandom(8 * 1024 * KiB + 5)
    calls: list[int] = []
    writev = os.writev

    def slow_writev(fd: int, buffers: list[bytes]) -> int:
        calls.append(len(buffers))
        time.sleep(0.002)  # a thread busier than the network: the chunks queue up
        return writev(fd, buffers)

    monkeypatch.setattr(os, "writev", slow_writev)
    digest = hashlib.sha256()
    target = tmp_path / "c" / "f"
    assert await put_local("c/f", target, chunks_of(data, 64 * KiB), digest.update) == len(data)
    assert target.read_bytes() == data
    assert digest.digest() == hashlib.sha256(data).digest()
    chunks = len(range(0, len(data), 64 * KiB))  # 129
    assert sum(calls) == chunks
    assert len(calls) <= 1 + 16 + chunks // 16  # the first MiB chunk by chunk, then batches


async def test_a_short_writev_is_continued_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * 1024 * KiB + 7)
    writev = os.writev

    def short_writev(fd: int, buffers: list[bytes | memoryview]) -> int:
        # At most 100,001 bytes per call: most calls stop inside a chunk.
        taken: list[bytes | memoryview] = []
        room = 100_001
        for buffer in buffers:
            if room <= 0:
                break
            taken.append(memoryview(buffer)[:room])
            room -= len(taken[-1])
        return writev(fd, taken)

    monkeypatch.setattr(os, "writev", short_writev)
    target = tmp_path / "c" / "f"
    assert await put_local("c/f", target, chunks_of(data, 300 * KiB)) == len(data)
    assert target.read_bytes() == data


async def test_the_object_appears_after_the_file_fsync_the_rename_and_the_folder_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "coll" / "v1.gpg"
    seen: list[tuple[str, bool, list[str]]] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        seen.append((kind, target.exists(), staging_files(tmp_path)))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    await put_local("coll/v1.gpg", target, chunks_of(b"payload" * 50_000))
    (before_rename, after_rename) = seen
    assert before_rename[:2] == ("file", False)
    (name,) = before_rename[2]
    assert name.startswith("v1.gpg#")
    assert name.removeprefix("v1.gpg#").isdigit()
    assert after_rename == ("folder", True, [])
    assert target.read_bytes() == b"payload" * 50_000


async def test_a_failing_fsync_is_storage_unavailable_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageUnavailable, match="write of 'c/f' failed"):
        await put_local("c/f", tmp_path / "c" / "f", chunks_of(b"x" * 300_000))
    assert list((tmp_path / "c").iterdir()) == []


async def test_a_folder_that_cannot_be_made_is_storage_unavailable(tmp_path: Path) -> None:
    (tmp_path / "c").write_bytes(b"a file where the folder should be")
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield b"x" * 1000
            await asyncio.sleep(0)

    with pytest.raises(StorageUnavailable, match="write of 'c/f' failed"):
        await put_local("c/f", tmp_path / "c" / "f", chunks())
    # The failed open stops the stream early: at the latest when the batches in flight
    # (of 64 chunks this small) leave no room.
    assert pulled < 1000
    assert (tmp_path / "c").read_bytes() == b"a file where the folder should be"


async def test_the_first_write_into_a_new_folder_makes_it(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    assert await put_local("a/b/c", target, chunks_of(b"deep")) == 4
    assert target.read_bytes() == b"deep"
    assert staging_files(tmp_path) == []


async def test_a_staging_name_taken_already_is_not_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another write (or its crash) holds the name this write drew: the write fails, and the
    # other one's file stays as it was.
    (tmp_path / "c").mkdir()
    theirs = tmp_path / "c" / "f#42"
    theirs.write_bytes(b"another write's staging file")
    monkeypatch.setattr(secrets, "randbelow", lambda limit: 41)
    with pytest.raises(StorageUnavailable):
        await put_local("c/f", tmp_path / "c" / "f", chunks_of(b"mine"))
    assert theirs.read_bytes() == b"another write's staging file"
    assert not (tmp_path / "c" / "f").exists()


async def test_a_failing_observer_raises_its_own_error_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    class Refused(Exception):
        pass

    error = Refused("not an OpenPGP message")

    def observe(chunk: bytes) -> None:
        raise error

    with pytest.raises(Refused) as raised:
        await put_local("c/f", tmp_path / "c" / "f", chunks_of(b"x" * 500_000), observe)
    assert raised.value is error
    assert list((tmp_path / "c").iterdir()) == []


async def test_cancellation_while_waiting_for_chunks_removes_the_staging_file(
    tmp_path: Path,
) -> None:
    first = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * 100_000
        first.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(put_local("c/f", tmp_path / "c" / "f", stalls()))
    await first.wait()
    await asyncio.sleep(0.05)
    assert len(staging_files(tmp_path)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list((tmp_path / "c").iterdir()) == []


async def test_a_file_object_is_deleted_by_an_unlink_in_a_worker_thread(tmp_path: Path) -> None:
    # obstore's delete went through its runtime's threads: twice the event loop's CPU of a
    # plain unlink in the loop's executor, and an upload deletes twice (the clean-up's
    # unrecorded object, the rotated version).
    store = open_blob_store(tmp_path.as_uri())
    await store.put_stream("c/f", chunks_of(b"rotated out"))
    counted = Counted(asyncio.get_running_loop())
    await store.delete("c/f")
    await store.delete("c/missing")  # nothing to delete is no error
    assert counted.executor == 2
    assert list((tmp_path / "c").iterdir()) == []
    (tmp_path / "c" / "folder").mkdir()
    with pytest.raises(StorageUnavailable, match="delete of 'c/folder' failed"):
        await store.delete("c/folder")


async def test_each_call_of_the_file_store_is_one_trip_to_a_worker_thread(
    tmp_path: Path,
) -> None:
    # obstore's LocalStore answered each call from its runtime's threads: one wake-up of the
    # loop per call and one per chunk read. The store on the standard library costs no more.
    store = open_blob_store(tmp_path.as_uri())
    data = os.urandom(3 * 1024 * KiB + 5)  # three chunks of 1 MiB and 5 bytes
    await store.put_stream("c/f", chunks_of(data))
    await store.put_stream("c/g", chunks_of(b"small"))
    loop = asyncio.get_running_loop()

    async def trips(call: Callable[[], Any]) -> tuple[int, int]:
        counted = Counted(loop)
        try:
            await call()
        finally:
            del loop.run_in_executor, loop.call_soon_threadsafe  # the loop's own again
        return counted.executor, counted.wakeups

    async def read(start: int = 0, end: int | None = None) -> bytes:
        return b"".join([piece async for piece in store.read("c/f", start, end)])

    async def listing() -> list[str]:
        return [info.key async for info in store.list("c/")]

    assert await trips(lambda: store.stat("c/f")) == (1, 1)
    assert await trips(lambda: store.stat("c/missing")) == (1, 1)
    assert await trips(read) == (4, 4)
    assert await trips(lambda: read(3 * 1024 * KiB)) == (1, 1)
    assert await trips(lambda: read(7, 7)) == (1, 1)
    assert await trips(listing) == (1, 1)
    assert await trips(store.probe) == (1, 1)
    assert await trips(lambda: store.remove_leftovers("c/", ["c/g"])) == (1, 1)
    assert file_names(tmp_path) == ["f"]


async def test_reads_of_the_file_store_come_in_chunks_of_one_mib(tmp_path: Path) -> None:
    store = open_blob_store(tmp_path.as_uri())
    data = os.urandom(2 * 1024 * KiB + 300)
    await store.put_stream("c/f", chunks_of(data))
    pieces = [len(piece) async for piece in store.read("c/f", 100)]
    assert pieces == [1024 * KiB, 1024 * KiB, 200]
    pieces = [len(piece) async for piece in store.read("c/f", 100, 1024 * KiB + 200)]
    assert pieces == [1024 * KiB, 100]
    # A file that grows while it is read is read up to the size it had when opened.
    reading = store.read("c/f")
    first = await anext(reading)
    with (tmp_path / "c" / "f").open("ab") as grown:
        grown.write(b"appended")
    assert first + b"".join([piece async for piece in reading]) == data


def open_files() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("cut", ["opening", "reading"])
async def test_a_cancelled_read_closes_its_file_once_the_thread_is_done_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    store = open_blob_store(tmp_path.as_uri())
    await store.put_stream("c/f", chunks_of(os.urandom(2 * 1024 * KiB)))
    before = open_files()
    in_thread = threading.Event()
    release = threading.Event()
    pread = os.pread
    calls = 0

    def held_pread(fd: int, size: int, offset: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls == (1 if cut == "opening" else 2):
            in_thread.set()
            release.wait(10)
        return pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", held_pread)

    async def consume() -> None:
        async for _piece in store.read("c/f"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.to_thread(in_thread.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(open_files() - before) == 1  # still the thread's, not closed under it
    release.set()
    for _ in range(100):
        if open_files() == before:
            break
        await asyncio.sleep(0.01)
    assert open_files() == before
