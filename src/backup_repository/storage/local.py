"""file:// writes: a staging file, written from a thread, fsynced and renamed over the
target; and the removal of staging files an interrupted write left behind.

One thread (a ChunkWorker's, kept for reuse) does the whole write: it opens the staging
file, runs the caller's ``observe`` (the upload's SHA-256) on each chunk before writing
it, then fsyncs the file, renames it and fsyncs its folder, or removes it after a failure.
The event loop hands the chunks over with a queue put per batch of about 1 MiB (the first
ones at once while the thread has nothing to do; see streams.py), the thread writes a batch
with one ``writev``, and the loop is woken once, when the write is done (and when it waits
for room): no hop through an executor before or after the chunks, no thread started per
write. Hashing and writing release the GIL, so they overlap the event loop receiving the
next chunks.

The staging file is named ``<name>#<n>``, as obstore's LocalStore names its own, so the
clean-up of interrupted writes is the same whichever wrote them. Faster than obstore's
local store and durable: a version recorded after a power loss is complete on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterable, Callable, Sequence
from pathlib import Path

from backup_repository.storage.errors import unavailable
from backup_repository.storage.keys import STAGING_NAME
from backup_repository.streams import ChunkWorker

logger = logging.getLogger(__name__)


async def put_local(
    key: str,
    target: Path,
    chunks: AsyncIterable[bytes],
    observe: Callable[[bytes], object] | None = None,
) -> int:
    """Write ``chunks`` to ``target`` (the file of ``key``) through a staging file and
    return the number of bytes written; ``observe`` sees each chunk just before it is
    written. When ``chunks`` or ``observe`` raises, or the task is cancelled, the staging
    file is removed and the exception propagates; an OSError of the write becomes
    StorageUnavailable."""
    staging = _StagingFile(target, observe)
    writer = ChunkWorker(
        batch_work=staging.write,
        batch_bytes=BATCH_BYTES,
        depth=DEPTH,
        name="storage-write",
        start=staging.open,
        end=staging.commit,
        cleanup=staging.discard,
    )
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            await writer.submit(chunk)
        await writer.finish()
    except BaseException as exc:
        await writer.abort()
        if isinstance(exc, _ObserverFailed):
            raise exc.error from None
        if isinstance(exc, OSError):
            raise unavailable("write", key, exc) from exc
        raise
    return size


def delete_local(path: Path) -> None:
    """Remove the file of an object, if it is there (blocking: run it in a thread). A plain
    unlink in a worker thread costs the event loop less than obstore's delete, which goes
    through its runtime's threads."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_staging_files(root: Path, prefix: str) -> int:
    """Delete the staging files under ``root`` whose key starts with ``prefix`` and
    return their number (blocking: run it in a thread)."""
    folder = prefix.rpartition("/")[0]
    start = root.joinpath(*folder.split("/")) if folder else root
    removed = 0
    for directory, _dirs, files in os.walk(start):
        for name in files:
            if not STAGING_NAME.search(name):
                continue
            path = Path(directory, name)
            key = path.relative_to(root).as_posix()
            if not key.startswith(prefix):
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            logger.info("removed the staging file of an interrupted write: %s", key)
            removed += 1
    return removed


def remove_leftovers(root: Path, prefix: str, keys: Sequence[str]) -> int:
    """The staging files under ``prefix`` and the files of ``keys`` (those that are there)
    removed in one call; the number of staging files (blocking: run it in a thread)."""
    removed = remove_staging_files(root, prefix)
    for key in keys:
        delete_local(root.joinpath(*key.split("/")))
    return removed


class _ObserverFailed(Exception):
    """Carries an exception of ``observe`` past the OSError handling of the write."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
# The chunks of a write go to its thread in batches of at least BATCH_BYTES (each batch
# one wake-up of the thread and one writev), at most DEPTH batches in flight: with the
# batch being filled and granian's read buffer, a few MiB of a large upload in memory (the
# peak RSS of a 1 GiB upload stays within 8 MiB of idle, bench/throughput.py).
BATCH_BYTES = 1024 * 1024
DEPTH = 2


class _StagingFile:
    """The staging file of one write; every method is blocking and runs in the writer's
    thread."""

    def __init__(self, target: Path, observe: Callable[[bytes], object] | None) -> None:
        self.target = target
        self.path = target.with_name(f"{target.name}#{secrets.randbelow(10**9) + 1}")
        self.observe = observe
        self.fd: int | None = None
        self.created = False  # by this write (a name taken already is not ours to remove)

    def open(self) -> None:
        try:
            self.fd = os.open(self.path, _CREATE, 0o666)
        except FileNotFoundError:  # the first object of its folder
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, _CREATE, 0o666)
        self.created = True

    def write(self, chunks: list[bytes]) -> None:
        observe = self.observe
        if observe is not None:
            try:
                for chunk in chunks:
                    observe(chunk)
            except Exception as exc:
                raise _ObserverFailed(exc) from exc
        assert self.fd is not None
        _write_all(self.fd, chunks)

    def commit(self) -> None:
        """fsync the file, rename it over the target, fsync the folder: only then is the
        object there, and there after a power loss."""
        fd = self.fd
        assert fd is not None
        os.fsync(fd)
        self.fd = None
        os.close(fd)
        os.replace(self.path, self.target)
        directory = os.open(self.target.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def discard(self) -> None:
        """Remove the staging file, if this write created it."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
        if self.created:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """One ``writev`` of ``chunks``, continued where the kernel stopped if it wrote less."""
    left = sum(len(chunk) for chunk in chunks)
    buffers: list[bytes | memoryview] = list(chunks)
    while left:
        written = os.writev(fd, buffers)
        left -= written
        if not left:
            return
        while written >= len(buffers[0]):
            written -= len(buffers[0])
            del buffers[0]
        buffers[0] = memoryview(buffers[0])[written:]
