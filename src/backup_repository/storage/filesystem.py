"""The BlobStore of file:// storage, on the standard library alone: a key is the file
``<root>/<key>`` (its ``/`` are folders, nothing is escaped), as in obstore's LocalStore,
which this store replaced, so folders written by either are read by the other.

Each call is at most one trip to a worker thread and back (a read: one per chunk of
``READ_CHUNK_SIZE``, the first one opening the file; a listing: one per 1,000 objects; the
probe's write, read and delete: one together), which is no more than obstore's runtime
cost, and none of obstore's code is loaded: a server on file:// storage is about 12 MiB
smaller.

Writes go through :func:`~backup_repository.storage.local.put_local` (staging file, fsync,
rename, fsync of the folder). What the other calls answer, as LocalStore did:

- ``stat`` of a folder is None (no object); ``read`` of one is BlobNotFound. A symbolic
  link is followed (size, time and identity of its target); a dangling one is no object.
- ``list`` walks the folder of the prefix depth first, in the order the file system
  gives the names, following symbolic links, and keeps the regular files whose key starts
  with the prefix, leaving out staging files (a name whose part after its first ``#`` is
  digits). A file under the walked folder whose path is no valid key (control characters,
  a name that is not UTF-8) or a loop of symbolic links fails the listing with
  StorageUnavailable; a file or folder that vanishes meanwhile is skipped.
- ``etag`` is ``"<inode>-<mtime in µs>-<size>"`` in hexadecimal, quoted;
  ``last_modified`` the file's mtime (UTC, to the microsecond).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import re
import secrets
import stat
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

from backup_repository.storage.base import BlobInfo, BlobNotFound, StorageUnavailable
from backup_repository.storage.defaults import (
    DEFAULT_PROBE_TIMEOUT,
    PROBE_PREFIX,
    READ_CHUNK_SIZE,
)
from backup_repository.storage.errors import unavailable
from backup_repository.storage.keys import validate_key, validate_prefix
from backup_repository.storage.local import (
    delete_local,
    put_local,
    remove_leftovers,
    remove_staging_files,
)
from backup_repository.storage.urls import FileLocation

if TYPE_CHECKING:
    from os import _ScandirIterator

LIST_BATCH: Final = 1000
"""Objects a listing collects per trip to a worker thread."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# LocalStore's staging names, as its listings leave them out: the part after the first '#'.
_STAGING_SUFFIX: Final = re.compile(r"[0-9]+")
# What obstore's paths refuse in a segment (its listing failed on such a file).
_NOT_IN_A_KEY: Final = re.compile(r"[\x00-\x1f\x7f]")
_READ: Final = os.O_RDONLY | os.O_CLOEXEC
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class FileBlobStore:
    """:class:`~backup_repository.storage.base.BlobStore` on a local (or mounted) folder."""

    def __init__(
        self,
        location: FileLocation,
        *,
        description: str,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    ) -> None:
        self._location = location
        self._root = location.root
        self._description = description
        self._probe_timeout = probe_timeout
        self._probe_key = f"{PROBE_PREFIX}{secrets.token_hex(16)}"
        self._probe_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"FileBlobStore({self._description})"

    @property
    def location(self) -> FileLocation:
        return self._location

    def local_path(self, key: str) -> Path:
        """The file of ``key`` (whether or not it exists yet)."""
        validate_key(key)
        return self._root.joinpath(*key.split("/"))

    # -- writes ------------------------------------------------------------------------------

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        observe: Callable[[bytes], object] | None = None,
    ) -> int:
        return await put_local(key, self.local_path(key), chunks, observe)

    async def delete(self, key: str) -> None:
        target = self.local_path(key)
        try:
            await asyncio.to_thread(delete_local, target)
        except OSError as exc:
            raise unavailable("delete", key, exc) from exc

    # -- reads -------------------------------------------------------------------------------

    async def stat(self, key: str) -> BlobInfo | None:
        target = self.local_path(key)
        try:
            found = await asyncio.to_thread(os.stat, target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise unavailable("stat", key, exc) from exc
        if stat.S_ISDIR(found.st_mode):
            return None
        return _info(key, found)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` in chunks of ``READ_CHUNK_SIZE`` (the last one shorter),
        up to the size the file had when it was opened. A range reaching past the end of
        the object is cut at the end; a range starting at or after the end (or
        ``start == end``) yields nothing. Raises BlobNotFound when the object does not
        exist, ValueError for ``start < 0`` or ``end < start``."""
        target = self.local_path(key)
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range [{start}, {end})")
        loop = asyncio.get_running_loop()
        # Shielded trips: a cancelled read closes the file only once the thread is done
        # with it (and the file a cancelled open opened is closed when it comes back).
        opening = loop.run_in_executor(None, _open_and_read, target, start, end)
        try:
            fd, stop, chunk = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)
            raise
        except (FileNotFoundError, IsADirectoryError):
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise unavailable("read", key, exc) from exc
        reading: asyncio.Future[bytes] | None = None
        try:
            position = start + len(chunk)
            while chunk:
                yield chunk
                if position >= stop:
                    return
                size = min(READ_CHUNK_SIZE, stop - position)
                reading = loop.run_in_executor(None, _read_at, fd, size, position)
                try:
                    chunk = await asyncio.shield(reading)
                except OSError as exc:
                    raise unavailable("read", key, exc) from exc
                position += len(chunk)
        finally:
            if reading is None or reading.done():
                os.close(fd)
            else:
                reading.add_done_callback(lambda _: os.close(fd))

    async def list(self, prefix: str) -> AsyncIterator[BlobInfo]:
        """Objects whose key starts with ``prefix`` (plain string prefix: ``a/b`` matches
        ``a/b/c`` and ``a/bc``), in no particular order. In-progress writes are not listed."""
        validate_prefix(prefix)
        folder = prefix.rpartition("/")[0]
        start = self._root.joinpath(*folder.split("/")) if folder else self._root
        walk = _walk(self._root, start, prefix)
        try:
            while True:
                try:
                    batch = await asyncio.to_thread(_next_batch, walk)
                except OSError as exc:
                    raise unavailable("list", prefix or "/", exc) from exc
                for info in batch:
                    yield info
                if len(batch) < LIST_BATCH:
                    return
        finally:
            # Still running in its thread when this one was cancelled: it closes its
            # folders when that thread lets go of it.
            with contextlib.suppress(ValueError):
                walk.close()

    # -- operations --------------------------------------------------------------------------

    async def probe(self) -> None:
        """Write, read back and delete a small object under ``.health/`` in one trip to a
        worker thread. One key per store instance, probes one at a time: a probe cut off
        by the timeout may still land its write later, and the next successful probe
        removes it, so hung storage leaves at most one object under .health/ per replica."""
        key = self._probe_key
        payload = secrets.token_bytes(64)
        try:
            async with asyncio.timeout(self._probe_timeout), self._probe_lock:
                await asyncio.to_thread(
                    _round_trip, key, self.local_path(key), payload, self._description
                )
        except TimeoutError:
            raise StorageUnavailable(
                f"storage did not complete a write, read and delete within "
                f"{self._probe_timeout:g} s ({self._description})"
            ) from None

    async def remove_incomplete_writes(self, prefix: str) -> int:
        """Delete the staging files ``<name>#<n>`` under ``prefix`` and return their number."""
        validate_prefix(prefix)
        try:
            return await asyncio.to_thread(remove_staging_files, self._root, prefix)
        except OSError as exc:
            raise unavailable("clean-up", prefix or "/", exc) from exc

    async def remove_leftovers(self, prefix: str, keys: Sequence[str]) -> int:
        """The staging files under ``prefix`` and the files of ``keys`` go in one trip to a
        worker thread (an upload's clean-up under its collection's lock: one hand-over and
        one wake of the event loop, not one per call). Returns the number of staging files
        removed."""
        validate_prefix(prefix)
        for key in keys:
            validate_key(key)
        try:
            return await asyncio.to_thread(remove_leftovers, self._root, prefix, keys)
        except OSError as exc:
            raise unavailable("clean-up", prefix or "/", exc) from exc

    async def close(self) -> None:
        """Nothing to release: no file stays open between calls."""


# -- blocking parts, run in worker threads -----------------------------------------------------


def _info(key: str, found: os.stat_result) -> BlobInfo:
    micros = found.st_mtime_ns // 1000
    return BlobInfo(
        key=key,
        size=found.st_size,
        last_modified=_EPOCH + timedelta(microseconds=micros),
        etag=f'"{found.st_ino:x}-{max(micros, 0):x}-{found.st_size:x}"',
    )


def _open_and_read(path: Path, start: int, end: int | None) -> tuple[int, int, bytes]:
    """Open the file, and read the first chunk of ``[start, end)``: the descriptor, where
    the range stops (cut at the file's size) and the chunk (empty: nothing to read).
    IsADirectoryError for a folder."""
    fd = os.open(path, _READ)
    try:
        found = os.fstat(fd)
        if stat.S_ISDIR(found.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        stop = found.st_size if end is None else min(end, found.st_size)
        chunk = _read_at(fd, min(READ_CHUNK_SIZE, stop - start), start) if start < stop else b""
    except BaseException:
        os.close(fd)
        raise
    return fd, stop, chunk


def _close_opened(opening: asyncio.Future[tuple[int, int, bytes]]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result()[0])


def _read_at(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset``, fewer only at the end of the file."""
    chunk = os.pread(fd, size, offset)
    if len(chunk) == size or not chunk:
        return chunk
    pieces = [chunk]
    got = len(chunk)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


def _next_batch(walk: Iterator[BlobInfo]) -> list[BlobInfo]:
    return list(itertools.islice(walk, LIST_BATCH))


def _walk(root: Path, start: Path, prefix: str) -> Generator[BlobInfo, None, None]:
    """The objects under ``start`` whose key starts with ``prefix``, depth first in the
    order the file system gives the names (a folder's contents come where the folder
    does), following symbolic links; see the module's description for what is left out.
    OSError for a loop of symbolic links or a folder that cannot be read."""
    base = os.path.join(root, "")
    try:
        top = os.stat(start)
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISDIR(top.st_mode):
        return
    # The folders being walked, and the identity of each (a loop of links comes back to one).
    folders: list[_ScandirIterator[str]] = []
    identities: list[tuple[int, int]] = []
    try:
        folders.append(os.scandir(start))
        identities.append((top.st_dev, top.st_ino))
        while folders:
            entry = next(folders[-1], None)
            if entry is None:
                scanner = folders.pop()
                identities.pop()
                scanner.close()
                continue
            try:
                found = entry.stat()
            except FileNotFoundError:  # vanished, or a dangling link
                continue
            if stat.S_ISDIR(found.st_mode):
                identity = (found.st_dev, found.st_ino)
                if identity in identities:
                    raise OSError(errno.ELOOP, "a loop of symbolic links", entry.path)
                try:
                    folders.append(os.scandir(entry.path))
                except FileNotFoundError:
                    continue
                identities.append(identity)
                continue
            if not stat.S_ISREG(found.st_mode):
                continue
            key = entry.path.removeprefix(base)
            if os.sep != "/":  # pragma: no cover - POSIX only
                key = key.replace(os.sep, "/")
            _check_listed_key(key)
            name = entry.name
            _, hash_sign, suffix = name.partition("#")
            if hash_sign and _STAGING_SUFFIX.fullmatch(suffix):
                continue
            if key.startswith(prefix):
                yield _info(key, found)
    finally:
        for scanner in folders:
            scanner.close()


def _check_listed_key(key: str) -> None:
    """A file whose path cannot be a key fails the listing (OSError), as it did on
    obstore, rather than being left out unseen."""
    if _NOT_IN_A_KEY.search(key):
        raise OSError(errno.EINVAL, "a file name with control characters", key)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise OSError(errno.EILSEQ, "a file name that is not UTF-8", key) from None


def _round_trip(key: str, target: Path, payload: bytes, description: str) -> None:
    """The probe's write (through a staging file, as every write), read and delete."""
    try:
        _write_small(target, payload)
    except OSError as exc:
        raise unavailable("probe write", key, exc) from exc
    try:
        try:
            stored = target.read_bytes()
        except OSError as exc:
            raise unavailable("probe read", key, exc) from exc
        if stored != payload:
            raise StorageUnavailable(
                f"storage returned different bytes than were written ({description})"
            )
    finally:
        try:
            delete_local(target)
        except OSError as exc:
            raise unavailable("delete", key, exc) from exc


def _write_small(target: Path, payload: bytes) -> None:
    staging = target.with_name(f"{target.name}#{secrets.randbelow(10**9) + 1}")
    try:
        fd = os.open(staging, _CREATE, 0o666)
    except FileNotFoundError:  # the first probe, or the root was removed
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(staging, _CREATE, 0o666)
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(staging, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        raise
