"""Work on a stream of chunks moved off the event loop.

Hashing and writing a large upload are CPU and disk work that would otherwise run on the
event loop between network reads. ``ChunkWorker`` runs one blocking function over the
chunks in a thread, in order, with a bounded number of chunks in flight, so receiving,
hashing and writing overlap on different cores while memory stays bounded. (hashlib and
file writes release the GIL for large buffers.)

Handing a chunk over costs one queue put; the thread reports back to the event loop only
when the loop is waiting for room (all ``depth`` slots taken; it is woken once half of them
are free again) and when the stream ends. A report is a write to the loop's wake-up pipe
and a turn of the loop, about as much work as hashing a small chunk, so reporting every
chunk done (as a semaphore released from the thread would) cost more than a third of the
CPU time an upload spends outside hashing and the kernel's copies.

A hand-over to a sleeping thread also wakes it: a futex call on each side and a hand-over
of the GIL, which cost more when the two cores are busy with other work. The server
receives a large upload in chunks of up to 1 MiB (granian's read buffer, http/serve.py; far
less when the client is slow to send, as on a loaded machine), so a file write hands them
over in batches of about 1 MiB
(``batch_work``): on a 2-vCPU machine shared with other work, the writer thread of a 512
MiB upload went from about 6,000 voluntary context switches to 600, and the upload took
4-24% less server CPU (docs/benchmarks.md).

The work before the first chunk and after the last one (a file write opens a staging file,
then fsyncs and renames it) runs in the same thread as the ``start`` and ``end`` of the
worker, and the clean-up after a failure as its ``cleanup``: an upload wakes the loop once
at its end, not once more per step through an executor.

The threads are kept for reuse (``THREADS``): ``Thread.start`` blocks the event loop
until the new thread runs, once per upload when every worker started its own. A thread
that is done goes back among the idle ones before it reports the end of its job, so
uploads one after the other keep using one thread. No more than ``keep`` threads stay
idle, each ends after ``idle_seconds`` without work, and they are daemon threads: an idle
one never holds up the process's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_STOP = object()
# A job, the name of the thread that runs it, and what to run once the thread is idle again.
_Job = tuple[Callable[[], object], str, Callable[[], object] | None]


class _Aborted(Exception):
    """Marks a worker stopped on purpose: the chunks still queued are skipped."""


class ThreadPool:
    """Daemon threads that run one job after another, kept idle between jobs.

    ``run`` hands a job to the thread that went idle last (the others stay idle and end
    after ``idle_seconds``) or starts a thread when none is idle. A thread that finishes a
    job while ``keep`` threads are already idle ends. A job must not raise (one that does
    is logged). A forked child starts with no idle threads (the parent's are not there)."""

    def __init__(self, *, keep: int = 8, idle_seconds: float = 60.0) -> None:
        if keep < 0:
            raise ValueError("keep must not be negative")
        self.keep = keep
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        # One inbox per idle thread, the one that went idle last at the end.
        self._idle: list[queue.SimpleQueue[_Job | None]] = []
        self.started = 0  # threads started so far (a figure for tests)
        # A forked child has none of these threads: it must not hand them jobs.
        pool = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_threads(pool))

    @property
    def idle(self) -> int:
        """Threads waiting for a job."""
        return len(self._idle)

    def run(
        self, job: Callable[[], object], name: str, then: Callable[[], object] | None = None
    ) -> None:
        """Run ``job`` in a thread named ``name``, then ``then`` once the thread is back
        among the idle ones (so that a job ``then`` reports to can have the same thread)."""
        given = (job, name, then)
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                self.started += 1
        if inbox is not None:
            inbox.put(given)
            return
        inbox = queue.SimpleQueue()
        inbox.put(given)
        # The job goes through the inbox, not the thread's arguments, which the thread
        # would hold (and with them the job) for as long as it lives.
        threading.Thread(target=self._serve, args=(inbox,), name=name, daemon=True).start()

    def forget_threads(self) -> None:
        """In a forked child, which has none of the parent's threads: start afresh."""
        self._lock = threading.Lock()  # a thread of the parent may have held it
        self._idle = []

    def close(self) -> None:
        """End the idle threads (those running a job end when it is done, as before).
        The pool stays usable: a later ``run`` starts a thread again."""
        with self._lock:
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)

    def _serve(self, inbox: queue.SimpleQueue[_Job | None]) -> None:
        given = inbox.get()
        while given is not None:
            job, name, then = given
            del given
            threading.current_thread().name = name
            _call(job)
            del job  # hold nothing of the finished job while idle
            with self._lock:
                keep = len(self._idle) < self.keep
                if keep:
                    self._idle.append(inbox)
            if then is not None:
                _call(then)
                del then
            if not keep:
                return
            try:
                given = inbox.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if any(waiting is inbox for waiting in self._idle):
                        self._idle = [waiting for waiting in self._idle if waiting is not inbox]
                        return
                # ``run`` took this thread just now: its job is on the way.
                given = inbox.get()


def _forget_threads(pool: weakref.ref[ThreadPool]) -> None:
    alive = pool()
    if alive is not None:
        alive.forget_threads()


def _call(function: Callable[[], object]) -> None:
    try:
        function()
    except BaseException:  # a job handles its own errors; keep the thread alive
        logger.exception("a worker thread's job failed")


THREADS = ThreadPool()
"""The threads of every ChunkWorker."""

BATCH_CHUNKS = 64
"""The most chunks in one batch of a ChunkWorker with ``batch_work`` (a write of a batch is
one ``writev``, whose limit is 1,024 buffers)."""


class ChunkWorker:
    """Runs ``work`` over the chunks ``submit`` hands over, in order, in a thread of the
    pool, at most ``depth`` chunks in flight.

    With ``batch_work`` instead of ``work``, the chunks are handed over in batches (lists of
    chunks, in order; ``depth`` then counts batches): a batch goes once it holds
    ``batch_bytes`` bytes or ``BATCH_CHUNKS`` chunks, and at ``finish``. Within the first
    ``batch_bytes`` of the stream a chunk also goes at once when the thread has nothing to
    do, so that a short stream's work starts with its first chunk and overlaps the rest.
    A batch costs the thread one wake-up and the event loop one queue put, whatever the
    number of chunks in it.

    ``start`` runs in the thread before the first chunk; ``end`` after the last one, when
    nothing failed; ``cleanup`` last when something failed (``start``, ``work``, ``end``)
    or the worker was aborted. An exception of ``start`` or ``work`` skips the chunks
    still queued and is raised by the next ``submit`` or by ``finish``; one of ``end`` is
    raised by ``finish``; one of ``cleanup`` is logged.
    """

    def __init__(
        self,
        work: Callable[[bytes], object] | None = None,
        *,
        batch_work: Callable[[list[bytes]], object] | None = None,
        batch_bytes: int = 1024 * 1024,
        depth: int = 8,
        name: str,
        start: Callable[[], object] | None = None,
        end: Callable[[], object] | None = None,
        cleanup: Callable[[], object] | None = None,
        threads: ThreadPool | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        if (work is None) == (batch_work is None):
            raise ValueError("give either work or batch_work")
        if batch_bytes < 1:
            raise ValueError("batch_bytes must be at least 1")
        self._work: Callable[[Any], object]
        if batch_work is not None:
            self._work = batch_work
        elif work is not None:
            self._work = work
        self._batched = batch_work is not None
        self._batch_bytes = batch_bytes
        self._batch: list[bytes] = []  # the batch being filled, on the event loop's side
        self._batch_size = 0
        self._handed_bytes = 0  # in batches so far
        self._start = start
        self._end = end
        self._cleanup = cleanup
        self._depth = depth
        # Room is reported once this many chunks are left in flight.
        self._resume_at = depth // 2
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight = 0  # submitted and not yet done; guarded by _lock
        self._waiter: asyncio.Future[None] | None = None  # guarded by _lock
        self._loop = asyncio.get_running_loop()
        self._error: BaseException | None = None
        self._done = self._loop.create_future()
        (threads or THREADS).run(self._work_through, name, then=self._report_done)

    @property
    def in_flight(self) -> int:
        """Chunks (with ``batch_work``: batches) handed over and not yet worked on; a batch
        still being filled is not among them."""
        return self._in_flight

    def _report_done(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._finished)

    def _work_through(self) -> None:
        if self._start is not None:
            try:
                self._start()
            except BaseException as exc:  # handed to the event loop side
                self._error = exc
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if self._error is None:
                try:
                    self._work(item)
                except BaseException as exc:  # handed to the event loop side
                    self._error = exc
            # Not held while waiting for the next one: the bytes in memory stay those in
            # flight.
            del item
            waiter = None
            with self._lock:
                self._in_flight -= 1
                if self._waiter is not None and (
                    self._in_flight <= self._resume_at or self._error is not None
                ):
                    waiter, self._waiter = self._waiter, None
            if waiter is not None:
                self._loop.call_soon_threadsafe(_wake, waiter)
        if self._error is None and self._end is not None:
            try:
                self._end()
            except BaseException as exc:  # handed to the event loop side
                self._error = exc
        if self._error is not None and self._cleanup is not None:
            try:
                self._cleanup()
            except Exception:
                logger.warning("the clean-up after a failed stream failed", exc_info=True)

    def _finished(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    async def submit(self, chunk: bytes) -> None:
        """Queue a chunk; waits while ``depth`` chunks (or batches) are still being worked
        on."""
        if not self._batched:
            await self._hand_over(chunk)
            return
        if self._error is not None:
            raise self._error
        batch = self._batch
        batch.append(chunk)
        self._batch_size += len(chunk)
        if (
            self._batch_size >= self._batch_bytes
            or len(batch) >= BATCH_CHUNKS
            or (self._in_flight == 0 and self._handed_bytes < self._batch_bytes)
        ):
            self._handed_bytes += self._batch_size
            self._batch = []
            self._batch_size = 0
            await self._hand_over(batch)

    async def _hand_over(self, item: object) -> None:
        while True:
            if self._error is not None:
                raise self._error
            with self._lock:
                if self._in_flight < self._depth:
                    self._in_flight += 1
                    break
                waiter = self._waiter = self._loop.create_future()
            await waiter
        self._queue.put(item)

    async def finish(self) -> None:
        """Wait until every queued chunk and ``end`` are done; raise the worker's error,
        if any."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._batch_size = 0
            try:
                await self._hand_over(batch)
            except BaseException:
                self._queue.put(_STOP)
                raise
        self._queue.put(_STOP)
        await asyncio.shield(self._done)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Stop without waiting (on errors): queued chunks are still drained, unprocessed
        once an error occurred, and the thread's job ends by itself; a batch not handed
        over yet is dropped."""
        self._batch = []
        self._queue.put(_STOP)

    async def abort(self) -> None:
        """Stop and wait for the thread's job to end (``cleanup`` included, unless it
        ended before without a failure), ignoring its error (the caller is already
        failing for a reason of its own)."""
        self._error = self._error or _Aborted()
        self._batch = []
        self._queue.put(_STOP)
        await asyncio.shield(self._done)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
