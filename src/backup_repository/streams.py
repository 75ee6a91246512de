"""Work on a stream of chunks moved off the event loop.

Hashing and writing a large upload are CPU and disk work that would otherwise run on the
event loop between network reads. ``ChunkWorker`` runs one blocking function over the
chunks in a thread of its own, in order, with a bounded number of chunks in flight, so
receiving, hashing and writing overlap on different cores while memory stays bounded.
(hashlib and file writes release the GIL for large buffers.)
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
        self._work = work
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._slots = asyncio.Semaphore(depth)
        self._loop = asyncio.get_running_loop()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._done = self._loop.create_future()
        self._thread.start()

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
            self._loop.call_soon_threadsafe(self._slots.release)
        self._loop.call_soon_threadsafe(self._finished)

    def _finished(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    async def submit(self, chunk: bytes) -> None:
        """Queue a chunk; waits while ``depth`` chunks are still being worked on."""
        if self._error is not None:
            raise self._error
        await self._slots.acquire()
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
