"""ChunkWorker: order, bounded chunks in flight, errors, how rarely its thread reports back
to the event loop, batches of chunks, the work before and after the chunks in the same
thread, and the threads kept for reuse."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from backup_repository.streams import BATCH_CHUNKS, ChunkWorker, ThreadPool


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

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]
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


# -- batches ---------------------------------------------------------------------------------


async def test_a_busy_thread_gets_the_chunks_in_batches_of_batch_bytes() -> None:
    # Before, every chunk was a hand-over of its own: a queue put, and a wake-up of the
    # thread (a futex call on each side and a GIL hand-over) whenever it slept.
    batches: list[list[bytes]] = []

    def work(batch: list[bytes]) -> None:
        time.sleep(0.005)  # a thread busier than the network
        batches.append(batch)

    worker = ChunkWorker(batch_work=work, batch_bytes=1000, depth=2, name="test-batches")
    chunks = [bytes([n]) * 100 for n in range(100)]
    for chunk in chunks:
        await worker.submit(chunk)
        assert worker.in_flight <= 2
    await worker.finish()
    assert [chunk for batch in batches for chunk in batch] == chunks
    # The first chunk went at once (the thread had nothing to do), then batches of 1,000
    # bytes, and the rest at the end.
    assert [len(batch) for batch in batches] == [1] + [10] * 9 + [9]


async def test_an_idle_thread_gets_the_first_batch_bytes_chunk_by_chunk() -> None:
    # A short upload's hashing and writing start with its first chunk and overlap the rest
    # of it, instead of waiting for a whole batch.
    sizes: list[int] = []
    worker = ChunkWorker(
        batch_work=lambda batch: sizes.append(len(batch)),
        batch_bytes=1000,
        depth=8,
        name="test-idle",
    )

    def until_idle() -> None:
        while worker.in_flight:
            time.sleep(0.001)

    for _ in range(10):
        await worker.submit(b"x" * 100)
        await asyncio.to_thread(until_idle)
    # Past the first 1,000 bytes an idle thread no longer gets each chunk at once.
    for _ in range(5):
        await worker.submit(b"x" * 100)
    await worker.finish()
    assert sizes == [1] * 10 + [5]


async def test_a_batch_holds_at_most_batch_chunks_chunks() -> None:
    # A write of a batch is one writev, whose limit is 1,024 buffers.
    sizes: list[int] = []
    worker = ChunkWorker(
        batch_work=lambda batch: sizes.append(len(batch)),
        batch_bytes=1 << 30,
        name="test-count",
    )
    for _ in range(3 * BATCH_CHUNKS + 1):
        await worker.submit(b"x")
    await worker.finish()
    assert max(sizes) == BATCH_CHUNKS
    assert sum(sizes) == 3 * BATCH_CHUNKS + 1


async def test_an_error_of_a_batch_reaches_the_next_submit_or_finish() -> None:
    def work(batch: list[bytes]) -> None:
        raise Refused("batch")

    worker = ChunkWorker(batch_work=work, batch_bytes=10, name="test-batch-error")

    async def stream() -> None:
        for _ in range(1000):
            await worker.submit(b"x" * 10)
            await asyncio.sleep(0.001)
        await worker.finish()

    with pytest.raises(Refused):
        await stream()
    await worker.abort()


def test_work_or_batch_work_not_both() -> None:
    async def make(**kwargs: Any) -> None:
        ChunkWorker(name="test-args", **kwargs)

    with pytest.raises(ValueError, match="either"):
        asyncio.run(make())
    with pytest.raises(ValueError, match="either"):
        asyncio.run(make(work=lambda chunk: None, batch_work=lambda batch: None))


def test_depth_must_be_positive() -> None:
    async def make() -> None:
        ChunkWorker(lambda chunk: None, depth=0, name="test-depth")

    with pytest.raises(ValueError, match="depth"):
        asyncio.run(make())


# -- the work before the first chunk and after the last, in the same thread ------------------


class Recorder:
    """start, work, end and cleanup of one worker, with the thread each ran in."""

    def __init__(self, *, fail_start: bool = False, fail_on: bytes | None = None) -> None:
        self.events: list[tuple[str, int]] = []
        self.fail_start = fail_start
        self.fail_on = fail_on

    def start(self) -> None:
        self.events.append(("start", threading.get_ident()))
        if self.fail_start:
            raise Refused("start")

    def work(self, chunk: bytes) -> None:
        self.events.append((chunk.decode(), threading.get_ident()))
        if chunk == self.fail_on:
            raise Refused(chunk.decode())

    def end(self) -> None:
        self.events.append(("end", threading.get_ident()))

    def cleanup(self) -> None:
        self.events.append(("cleanup", threading.get_ident()))

    @property
    def steps(self) -> list[str]:
        return [step for step, _ in self.events]

    @property
    def threads(self) -> set[int]:
        return {thread for _, thread in self.events}

    def worker(self, **kwargs: Any) -> ChunkWorker:
        return ChunkWorker(
            self.work, start=self.start, end=self.end, cleanup=self.cleanup, **kwargs
        )


async def test_start_and_end_run_in_the_workers_thread_and_wake_the_loop_once() -> None:
    # Before, opening the staging file and the fsync and rename each took a hop through the
    # default executor: two more wake-ups of the loop per upload, and a thread hand-over.
    calls = counting_wakeups(asyncio.get_running_loop())
    recorder = Recorder()
    worker = recorder.worker(depth=8, name="test-steps")
    for n in range(3):
        await worker.submit(str(n).encode())
    await worker.finish()
    assert recorder.steps == ["start", "0", "1", "2", "end"]
    assert len(recorder.threads) == 1
    assert threading.get_ident() not in recorder.threads
    assert calls[0] == 1  # the end of the stream; the loop never waited for room


async def test_a_failing_chunk_skips_end_and_runs_cleanup() -> None:
    recorder = Recorder(fail_on=b"1")
    worker = recorder.worker(name="test-cleanup")
    for n in range(3):
        await worker.submit(str(n).encode())
    with pytest.raises(Refused, match="1"):
        await worker.finish()
    assert recorder.steps == ["start", "0", "1", "cleanup"]
    assert len(recorder.threads) == 1


async def test_a_failing_start_skips_every_chunk() -> None:
    recorder = Recorder(fail_start=True)
    worker = recorder.worker(depth=1, name="test-start")

    async def submit_all() -> None:
        async with asyncio.timeout(10):
            for n in range(100):
                await worker.submit(str(n).encode())

    with pytest.raises(Refused, match="start"):
        await submit_all()
    with pytest.raises(Refused, match="start"):
        await worker.finish()
    assert recorder.steps == ["start", "cleanup"]


async def test_a_failing_end_runs_cleanup() -> None:
    recorder = Recorder()

    def end() -> None:
        recorder.events.append(("end", threading.get_ident()))
        raise Refused("end")

    worker = ChunkWorker(
        recorder.work, start=recorder.start, end=end, cleanup=recorder.cleanup, name="t"
    )
    await worker.submit(b"0")
    with pytest.raises(Refused, match="end"):
        await worker.finish()
    assert recorder.steps == ["start", "0", "end", "cleanup"]


async def test_abort_runs_cleanup_and_not_end() -> None:
    recorder = Recorder()
    worker = recorder.worker(name="test-abort-cleanup")
    await worker.submit(b"0")
    await worker.abort()
    assert recorder.steps[-1] == "cleanup"
    assert "end" not in recorder.steps


async def test_abort_after_a_successful_finish_changes_nothing() -> None:
    recorder = Recorder()
    worker = recorder.worker(name="test-abort-late")
    await worker.submit(b"0")
    await worker.finish()
    await worker.abort()  # as a caller's `finally` does
    assert recorder.steps == ["start", "0", "end"]


async def test_a_failing_cleanup_is_logged_and_the_first_error_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def cleanup() -> None:
        raise OSError("cannot remove")

    def work(chunk: bytes) -> None:
        raise Refused("work")

    worker = ChunkWorker(work, cleanup=cleanup, name="test-cleanup-fails")
    await worker.submit(b"0")
    with pytest.raises(Refused):
        await worker.finish()
    assert "clean-up" in caplog.text


# -- threads kept for reuse ------------------------------------------------------------------


async def run_worker(
    pool: ThreadPool,
    seen: set[threading.Thread] | None = None,
    together: threading.Barrier | None = None,
) -> None:
    def work(chunk: bytes) -> None:
        if seen is not None:
            seen.add(threading.current_thread())
        if together is not None:
            together.wait(10)

    worker = ChunkWorker(work, name="test-pool", threads=pool)
    await worker.submit(b"x")
    await worker.finish()


def wait_until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


async def test_workers_one_after_the_other_reuse_threads() -> None:
    # Before, every worker started a thread of its own; Thread.start blocks the event loop
    # until the new thread runs.
    pool = ThreadPool(keep=4, idle_seconds=30)
    seen: set[threading.Thread] = set()
    try:
        for _ in range(30):
            await run_worker(pool, seen)
        # A thread is back among the idle ones before it reports the end of its job, so
        # the next worker always finds it.
        assert pool.started == 1
        assert len(seen) == 1
        assert all(thread.daemon for thread in seen)
    finally:
        pool.close()


async def test_idle_threads_end_after_a_while() -> None:
    pool = ThreadPool(keep=4, idle_seconds=0.05)
    seen: set[threading.Thread] = set()
    await run_worker(pool, seen)
    (thread,) = seen
    thread.join(10)
    assert not thread.is_alive()
    assert pool.idle == 0
    await run_worker(pool, seen)  # the pool starts a thread again
    assert pool.started == 2


async def test_no_more_than_keep_threads_stay_idle() -> None:
    pool = ThreadPool(keep=1, idle_seconds=30)
    seen: set[threading.Thread] = set()
    try:
        together = threading.Barrier(4)
        await asyncio.gather(*(run_worker(pool, seen, together) for _ in range(4)))
        assert pool.started == len(seen) == 4  # four at once: four threads
        wait_until(lambda: sum(thread.is_alive() for thread in seen) == 1)
        assert pool.idle == 1
    finally:
        pool.close()


async def test_close_ends_the_idle_threads() -> None:
    pool = ThreadPool(keep=4, idle_seconds=30)
    seen: set[threading.Thread] = set()
    together = threading.Barrier(2)
    await asyncio.gather(*(run_worker(pool, seen, together) for _ in range(2)))
    wait_until(lambda: pool.idle == 2)
    pool.close()
    for thread in seen:
        thread.join(10)
        assert not thread.is_alive()


def test_a_failing_job_does_not_end_its_thread(caplog: pytest.LogCaptureFixture) -> None:
    pool = ThreadPool(keep=1, idle_seconds=30)
    ran: list[threading.Thread] = []
    done = threading.Event()

    def failing() -> None:
        ran.append(threading.current_thread())
        raise RuntimeError("job failed")

    def next_job() -> None:
        ran.append(threading.current_thread())
        done.set()

    try:
        pool.run(failing, "test-failing")
        wait_until(lambda: pool.idle == 1)
        pool.run(next_job, "test-next")
        assert done.wait(10)
        assert ran[0] is ran[1]
        assert ran[1].name == "test-next"
        assert "job failed" in caplog.text
    finally:
        pool.close()


async def test_a_finished_worker_is_not_held_by_its_idle_thread() -> None:
    pool = ThreadPool(keep=1, idle_seconds=30)
    try:

        def work(chunk: bytes) -> None:
            pass

        worker = ChunkWorker(work, name="test-release", threads=pool)
        await worker.submit(b"x")
        await worker.finish()
        wait_until(lambda: pool.idle == 1)
        reference = weakref.ref(worker)
        del worker
        gc.collect()
        assert reference() is None
    finally:
        pool.close()


async def test_a_forked_child_starts_threads_of_its_own() -> None:
    # The parent's idle threads do not exist in a forked child: a job handed to one of
    # them would never run.
    pool = ThreadPool(keep=4, idle_seconds=30)
    try:
        await run_worker(pool)
        wait_until(lambda: pool.idle == 1)
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            ran = threading.Event()
            pool.run(ran.set, "test-child")
            os._exit(0 if ran.wait(10) else 1)
        _, status = await asyncio.to_thread(os.waitpid, child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert pool.idle == 1  # the parent's pool is as it was
    finally:
        pool.close()
