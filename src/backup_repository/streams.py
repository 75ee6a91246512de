"""Work on a stream of chunks moved off the event loop.

Hashing and writing a large upload are CPU and disk work that would otherwise run on the
event loop between network reads. ``ChunkWorker`` runs one blocking function over the
chunks in a thread of its own, in order, with a bounded number of chunks in flight, so
receiving, hashing and writing overlap on different cores while memory stays bounded.
(hashlib and file writes release the GIL for large buffers.)

Handing a chunk over costs one queue put; the thread reports back to the event loop only
when the loop is waiting for room (all ``depth`` slots taken; it is woken once half of them
are free again) and when the stream ends. A report is a write to the loop's wake-up pipe
and a turn of the loop, about as much work as hashing a small chunk, so reporting every
chunk done (as a semaphore released from the thread would) cost more than a third of the
CPU time an upload spends outside hashing and the kernel's copies.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable

_STOP = object()


class _Aborted(Exception):
    """Marks a worker stopped on purpose: the chunks still queued are skipped."""


class ChunkWorker:
    def __init__(self, work: Callable[[bytes], object], *, depth: int = 8, name: str) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._work = work
        self._depth = depth
        # Room is reported once this many chunks are left in flight.
        self._resume_at = depth // 2
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight = 0  # submitted and not yet done; guarded by _lock
        self._waiter: asyncio.Future[None] | None = None  # guarded by _lock
        self._loop = asyncio.get_running_loop()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._done = self._loop.create_future()
        self._thread.start()

    @property
    def in_flight(self) -> int:
        """Chunks submitted and not yet worked on."""
        return self._in_flight

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if self._error is None:
                try:
                    self._work(item)  # type: ignore[arg-type]
                except BaseException as exc:  # handed to the event loop side
                    self._error = exc
            waiter = None
            with self._lock:
                self._in_flight -= 1
                if self._waiter is not None and (
                    self._in_flight <= self._resume_at or self._error is not None
                ):
                    waiter, self._waiter = self._waiter, None
            if waiter is not None:
                self._loop.call_soon_threadsafe(_wake, waiter)
        self._loop.call_soon_threadsafe(self._finished)

    def _finished(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    async def submit(self, chunk: bytes) -> None:
        """Queue a chunk; waits while ``depth`` chunks are still being worked on."""
        while True:
            if self._error is not None:
                raise self._error
            with self._lock:
                if self._in_flight < self._depth:
                    self._in_flight += 1
                    break
                waiter = self._waiter = self._loop.create_future()
            await waiter
        self._queue.put(chunk)

    async def finish(self) -> None:
        """Wait until every queued chunk is done; raise the worker's error, if any."""
        self._queue.put(_STOP)
        await asyncio.shield(self._done)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Stop without waiting (on errors): queued chunks are still drained, unprocessed
        once an error occurred, and the thread ends by itself."""
        self._queue.put(_STOP)

    async def abort(self) -> None:
        """Stop and wait for the thread to end, ignoring its error (the caller is already
        failing for a reason of its own)."""
        self._error = self._error or _Aborted()
        self._queue.put(_STOP)
        await asyncio.shield(self._done)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
