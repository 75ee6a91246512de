"""ChunkWorker: order, bounded chunks in flight, errors, and how rarely its thread reports
back to the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from backup_repository.streams import ChunkWorker


class Refused(Exception):
    pass


def counting_wakeups(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Counts the callbacks other threads hand to ``loop`` (each one a write to its wake-up
    pipe and a turn of the loop)."""
    calls = [0]
    original = loop.call_soon_threadsafe

    def counted(callback: Callable[..., object], *args: Any, **kwargs: Any) -> asyncio.Handle:
        calls[0] += 1
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    return calls


async def test_chunks_are_worked_on_in_order_in_a_thread_of_their_own() -> None:
    seen: list[bytes] = []
    threads: set[int] = set()

    def work(chunk: bytes) -> None:
        threads.add(threading.get_ident())
        seen.append(chunk)

    worker = ChunkWorker(work, depth=3, name="test-order")
    chunks = [str(n).encode() for n in range(500)]
    for chunk in chunks:
        await worker.submit(chunk)
        assert worker.in_flight <= 3
    await worker.finish()
    assert seen == chunks
    assert len(threads) == 1
    assert threading.get_ident() not in threads


@pytest.mark.parametrize("slow", [False, True])
async def test_the_thread_reports_back_at_most_once_per_half_depth(slow: bool) -> None:
    # Before, every chunk done was reported (a semaphore released from the thread): one
    # wake-up of the loop per chunk. Now only a loop waiting for room is woken, once half
    # of the slots are free, whatever the speed of either side.
    calls = counting_wakeups(asyncio.get_running_loop())
    depth, count = 8, 400

    def work(chunk: bytes) -> None:
        if slow:
            time.sleep(0.0002)

    worker = ChunkWorker(work, depth=depth, name="test-wakeups")
    for _ in range(count):
        await worker.submit(b"x")
        assert worker.in_flight <= depth
        if not slow:
            await asyncio.sleep(0)  # the network's pace: the thread keeps up
    await worker.finish()
    assert calls[0] <= count // (depth // 2) + 1  # the waits, and the end of the stream


async def test_an_error_reaches_a_submitter_waiting_for_room() -> None:
    started = threading.Event()

    def work(chunk: bytes) -> None:
        started.wait()
        if chunk == b"2":
            raise Refused("no")
        time.sleep(0.001)

    worker = ChunkWorker(work, depth=2, name="test-error")
    # The thread starts once the loop is waiting for room (two chunks in flight).
    asyncio.get_running_loop().call_later(0.05, started.set)

    async def submit_all() -> None:
        async with asyncio.timeout(10):
            for n in range(100):
                await worker.submit(str(n).encode())

    with pytest.raises(Refused):
        await submit_all()
    with pytest.raises(Refused):
        await worker.finish()


async def test_finish_raises_the_error_of_the_last_chunk() -> None:
    def work(chunk: bytes) -> None:
        if chunk == b"last":
            raise Refused("last")

    worker = ChunkWorker(work, name="test-last")
    await worker.submit(b"first")
    await worker.submit(b"last")
    with pytest.raises(Refused):
        await worker.finish()


async def test_abort_skips_what_is_still_queued() -> None:
    release = threading.Event()
    seen: list[bytes] = []

    def work(chunk: bytes) -> None:
        release.wait()
        seen.append(chunk)

    worker = ChunkWorker(work, depth=4, name="test-abort")
    for n in range(4):
        await worker.submit(str(n).encode())
    aborting = asyncio.ensure_future(worker.abort())
    await asyncio.sleep(0.01)
    release.set()
    async with asyncio.timeout(10):
        await aborting
    assert len(seen) <= 1  # at most the chunk the thread was already working on


def test_depth_must_be_positive() -> None:
    async def make() -> None:
        ChunkWorker(lambda chunk: None, depth=0, name="test-depth")

    with pytest.raises(ValueError, match="depth"):
        asyncio.run(make())
