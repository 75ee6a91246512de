"""Writes to S3, GCS and Azure: obstore's multipart upload fed from the caller's stream,
aborted cleanly when the stream fails or the caller is cancelled.

- The object appears only when the multipart upload is completed. When the caller's
  iterator raises, obstore aborts the upload and the caller's exception propagates
  unchanged.
- Cancellation (a timeout, a server shutting down) is turned into the same clean abort:
  cancelling obstore's future directly would drop an S3 multipart upload without aborting
  it, so :func:`put_multipart` instead makes the iterator fail and waits (bounded) for
  obstore to abort before re-raising ``CancelledError``.
- Bounded memory: at most ``concurrency`` parts are in flight plus the one being filled.
- The caller's ``observe`` (the upload's SHA-256) runs on each chunk in a thread of its
  own (a ChunkWorker) and has seen every chunk before the upload is completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import BaseError as ObstoreError

from backup_repository.storage.errors import unavailable
from backup_repository.streams import ChunkWorker

if TYPE_CHECKING:
    from obstore.store import ObjectStore

logger = logging.getLogger(__name__)


class _PutAborted(Exception):
    """Raised into obstore's upload to make it abort (the caller was cancelled)."""


async def put_multipart(
    store: ObjectStore,
    key: str,
    chunks: AsyncIterable[bytes],
    *,
    part_size: int,
    concurrency: int,
    abort_timeout: float,
    observe: Callable[[bytes], object] | None = None,
) -> int:
    """Upload ``chunks`` to ``key`` in parts of ``part_size`` bytes, ``concurrency`` at a
    time, and return the number of bytes written."""
    feed = _Feed(chunks if observe is None else _observed(chunks, observe))
    put = asyncio.ensure_future(_put(store, key, feed, part_size, concurrency))
    try:
        await asyncio.shield(put)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if put.done() and (current is None or not current.cancelling()):
            return put.result()  # the upload itself ended with a CancelledError
        await _abort_put(key, put, feed, abort_timeout)
        raise
    return put.result()


async def _observed(
    chunks: AsyncIterable[bytes], observe: Callable[[bytes], object]
) -> AsyncIterator[bytes]:
    """``chunks``, each handed to ``observe`` in a thread; the end of the stream comes only
    once ``observe`` has seen every chunk, so its error fails the upload before it is
    completed."""
    worker = ChunkWorker(observe, name="storage-observe")
    try:
        async for chunk in chunks:
            await worker.submit(chunk)
            yield chunk
        await worker.finish()
    finally:
        # Also when obstore stops pulling (a storage error) and the generator is closed.
        await worker.abort()


async def _put(store: ObjectStore, key: str, feed: _Feed, part_size: int, concurrency: int) -> int:
    try:
        await obstore.put_async(store, key, feed, chunk_size=part_size, max_concurrency=concurrency)
    except (ObstoreError, OSError) as exc:
        feed.abort()  # stop a pull obstore may have left waiting on the caller's stream
        if feed.error is None:
            raise unavailable("write", key, exc) from exc
    except BaseException:
        feed.abort()
        if feed.error is None:
            raise
    if feed.error is not None:
        # The caller's iterator failed (quota, format, client gone) and obstore has
        # aborted the upload: the caller gets its own exception back, unwrapped.
        raise feed.error
    return feed.size


async def _abort_put(key: str, put: asyncio.Future[int], feed: _Feed, patience: float) -> None:
    """Make the running upload fail from the iterator side so obstore aborts it, and
    wait for that, repeated cancellations notwithstanding, for at most ``patience`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    feed.abort()
    while not put.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.warning(
                "storage did not abort the cancelled upload of %s within %.0f s; an "
                "unfinished multipart upload may remain (see the lifecycle rule in "
                "docs/storage.md)",
                key,
                patience,
            )
            put.cancel()
            break
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({put}, timeout=remaining)
    if put.done() and not put.cancelled():
        put.exception()  # retrieved: the caller gets CancelledError, not this


class _Feed:
    """The async iterator obstore pulls the upload from: forwards the caller's chunks,
    counts them, keeps the caller's exception, and can be made to fail from outside.

    obstore runs each ``__anext__`` as its own asyncio task; ``abort`` cancels the one
    waiting for the caller's next chunk, if any, and turns it into an error obstore sees."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._source = aiter(chunks)
        self._aborted = False
        self._pull: asyncio.Task[Any] | None = None
        self.size = 0
        self.error: BaseException | None = None

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> bytes:
        if self._aborted:
            raise _PutAborted
        self._pull = asyncio.current_task()
        try:
            chunk = await anext(self._source)
        except StopAsyncIteration:
            raise
        except asyncio.CancelledError as exc:
            if self._aborted:
                raise _PutAborted from None
            self.error = exc
            raise
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._pull = None
        self.size += len(chunk)
        return chunk

    def abort(self) -> None:
        self._aborted = True
        pull = self._pull
        if pull is not None and pull is not asyncio.current_task() and not pull.done():
            pull.cancel()
