"""file:// writes: a staging file, written from a thread of its own, fsynced and renamed
over the target; and the removal of staging files an interrupted write left behind.

The writing thread also runs the caller's ``observe`` (the upload's SHA-256) on each chunk
before writing it: one thread and one hand-over per chunk instead of two. Hashing and
writing release the GIL, so they overlap the event loop receiving the next chunks.

The staging file is named ``<name>#<n>``, as obstore's LocalStore names its own, so the
clean-up of interrupted writes is the same whichever wrote them. Faster than obstore's
local store and durable: a version recorded after a power loss is complete on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterable, Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO

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
    staging = target.with_name(f"{target.name}#{secrets.randbelow(10**9) + 1}")
    try:
        handle = await asyncio.to_thread(_open_staging, staging)
    except OSError as exc:
        raise unavailable("write", key, exc) from exc
    work = (
        partial(_write_all, handle)
        if observe is None
        else partial(_observe_and_write, handle, observe)
    )
    writer = ChunkWorker(work, depth=8, name="storage-write")
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            await writer.submit(chunk)
        await writer.finish()
        await asyncio.to_thread(_commit_staging, handle, staging, target)
    except BaseException as exc:
        await writer.abort()
        await asyncio.shield(asyncio.to_thread(_discard_staging, handle, staging))
        if isinstance(exc, _ObserverFailed):
            raise exc.error from None
        if isinstance(exc, OSError):
            raise unavailable("write", key, exc) from exc
        raise
    return size


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


def _open_staging(staging: Path) -> BinaryIO:
    staging.parent.mkdir(parents=True, exist_ok=True)
    return staging.open("xb", buffering=0)


def _write_all(handle: BinaryIO, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        written = handle.write(view)
        if written is None:  # pragma: no cover - only non-blocking files return None
            continue
        view = view[written:]


class _ObserverFailed(Exception):
    """Carries an exception of ``observe`` past the OSError handling of the write."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _observe_and_write(handle: BinaryIO, observe: Callable[[bytes], object], chunk: bytes) -> None:
    try:
        observe(chunk)
    except Exception as exc:
        raise _ObserverFailed(exc) from exc
    _write_all(handle, chunk)


def _commit_staging(handle: BinaryIO, staging: Path, target: Path) -> None:
    try:
        os.fsync(handle.fileno())
    finally:
        handle.close()
    os.replace(staging, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _discard_staging(handle: BinaryIO, staging: Path) -> None:
    handle.close()
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()
