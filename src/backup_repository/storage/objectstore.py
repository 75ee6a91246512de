"""The BlobStore on obstore (Rust object_store): file://, s3://, gs://, azblob://, memory://.

How the Protocol's promises are kept:

- Atomic writes: ``put_stream`` hands obstore an async iterator and lets it run a multipart
  upload in parts of ``part_size`` bytes. The object appears only when the upload is
  completed (S3/GCS/Azure) or the staging file ``<key>#<n>`` is renamed over the key
  (file://). When the caller's iterator raises, obstore aborts the upload / removes the
  staging file and the caller's exception propagates unchanged.
- Cancellation (a timeout, a server shutting down) is turned into the same clean abort:
  cancelling obstore's future directly would drop an S3 multipart upload without aborting
  it, so ``put_stream`` instead makes the iterator fail and waits (bounded) for obstore to
  abort before re-raising ``CancelledError``.
- Bounded memory: at most ``upload_concurrency`` parts are in flight plus the one being
  filled; reads stream in chunks of about ``READ_CHUNK_SIZE``.
- Timeouts: ``io_timeout`` bounds connecting and every wait for response bytes. Downloads
  have no overall deadline (a slow client may legitimately take hours, and the HTTP client's
  default of 30 s per request would cut them); other requests get ``REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import NotFoundError as ObstoreNotFound
from obstore.store import AzureStore, GCSStore, LocalStore, MemoryStore, S3Store

from backup_repository.storage.base import (
    BlobInfo,
    BlobNotFound,
    StorageError,
    StorageUnavailable,
)
from backup_repository.storage.urls import (
    AzureLocation,
    FileLocation,
    GCSLocation,
    MemoryLocation,
    S3Location,
    StorageLocation,
    parse_storage_url,
    redact_storage_url,
)
from backup_repository.streams import ChunkWorker

if TYPE_CHECKING:
    from obstore import GetOptions, ObjectMeta
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

logger = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
DEFAULT_PART_SIZE: Final = 8 * MiB
"""Multipart part size. S3 allows 10,000 parts, so this caps one object at 80,000 MiB
(about 78 GiB); raise it for larger backups (memory grows with it)."""
MIN_PART_SIZE: Final = 5 * MiB  # S3's minimum for every part but the last
DEFAULT_UPLOAD_CONCURRENCY: Final = 2
READ_CHUNK_SIZE: Final = 1 * MiB
"""Reads yield chunks of at least this size (but the last) and at most twice it."""
DEFAULT_IO_TIMEOUT: Final = 30.0
CONNECT_TIMEOUT: Final = 5.0
REQUEST_TIMEOUT: Final = 300.0
"""Overall limit of one request other than a download (a part upload, a HEAD, a DELETE)."""
DOWNLOAD_REQUEST_TIMEOUT: Final = timedelta(days=30)
"""Effectively none: a download is bounded by the idle timeout, not by its total time."""
DEFAULT_PROBE_TIMEOUT: Final = 10.0
ABORT_TIMEOUT: Final = 30.0
"""How long a cancelled ``put_stream`` waits for the upload to be aborted in storage."""
MAX_KEY_BYTES: Final = 1024
PROBE_PREFIX: Final = ".health/"

_STAGING_NAME = re.compile(r"#[0-9]+\Z")
"""obstore's LocalStore writes ``<name>`` through a staging file ``<name>#<n>`` (n = 1, 2,
... whichever is free) and renames it over the target when the write completes."""


class _PutAborted(Exception):
    """Raised into obstore's upload to make it abort (the caller was cancelled)."""


# -- keys ------------------------------------------------------------------------------------


def validate_key(key: str) -> None:
    """Refuse keys that could escape the store's root or collide with staging names:
    empty, leading or trailing ``/``, empty, ``.`` or ``..`` segments, backslashes, control
    characters, a segment ending in ``#<digits>``, more than 1024 bytes. Raises ValueError."""
    if not isinstance(key, str) or not key:
        raise ValueError("storage key must be a non-empty string")
    _validate_path(key, what="key")
    if key.endswith("/"):
        raise ValueError(f"storage key must not end with '/': {key!r}")


def validate_prefix(prefix: str) -> None:
    """Like :func:`validate_key`, but ``""`` (everything) and a trailing ``/`` are allowed."""
    if not isinstance(prefix, str):
        raise ValueError("storage prefix must be a string")
    if prefix:
        _validate_path(prefix[:-1] if prefix.endswith("/") else prefix, what="prefix")


def _validate_path(path: str, *, what: str) -> None:
    if path.startswith("/"):
        raise ValueError(f"storage {what} must not start with '/': {path!r}")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"storage {what} is longer than {MAX_KEY_BYTES} bytes")
    if "\\" in path or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ValueError(f"storage {what} must not contain backslashes or control characters")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"storage {what} must not contain empty, '.' or '..' segments")
        if _STAGING_NAME.search(segment):
            raise ValueError(f"storage {what} segments must not end with '#<digits>': {path!r}")


# -- the store -------------------------------------------------------------------------------


class ObstoreBlobStore:
    """:class:`~backup_repository.storage.base.BlobStore` on one obstore store."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        location: StorageLocation,
        description: str,
        read_store: ObjectStore | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        abort_timeout: float = ABORT_TIMEOUT,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if upload_concurrency < 1:
            raise ValueError("upload_concurrency must be at least 1")
        self._store = store
        self._read_store = read_store if read_store is not None else store
        self._location = location
        self._description = description
        self._part_size = part_size
        self._upload_concurrency = upload_concurrency
        self._probe_timeout = probe_timeout
        self._probe_key = f"{PROBE_PREFIX}{secrets.token_hex(16)}"
        self._probe_lock = asyncio.Lock()
        self._abort_timeout = abort_timeout

    def __repr__(self) -> str:
        return f"ObstoreBlobStore({self._description})"

    @property
    def location(self) -> StorageLocation:
        return self._location

    @property
    def part_size(self) -> int:
        return self._part_size

    # -- writes ------------------------------------------------------------------------------

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        validate_key(key)
        target = self.local_path(key)
        if target is not None:
            return await self._put_local(key, target, chunks)
        feed = _Feed(chunks)
        put = asyncio.ensure_future(self._put(key, feed))
        try:
            await asyncio.shield(put)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if put.done() and (current is None or not current.cancelling()):
                return put.result()  # the upload itself ended with a CancelledError
            await self._abort_put(key, put, feed)
            raise
        return put.result()

    async def _put(self, key: str, feed: _Feed) -> int:
        try:
            await obstore.put_async(
                self._store,
                key,
                feed,
                chunk_size=self._part_size,
                max_concurrency=self._upload_concurrency,
            )
        except (ObstoreError, OSError) as exc:
            feed.abort()  # stop a pull obstore may have left waiting on the caller's stream
            if feed.error is None:
                raise _unavailable("write", key, exc) from exc
        except BaseException:
            feed.abort()
            if feed.error is None:
                raise
        if feed.error is not None:
            # The caller's iterator failed (quota, format, client gone) and obstore has
            # aborted the upload: the caller gets its own exception back, unwrapped.
            raise feed.error
        return feed.size

    async def _put_local(self, key: str, target: Path, chunks: AsyncIterable[bytes]) -> int:
        """file://: write a staging file ``<name>#<n>`` (the name obstore's LocalStore uses,
        so the clean-up of interrupted writes is the same) from a thread of its own, fsync
        it, and rename it over the target. Faster than obstore's local store and durable:
        a version recorded after a power loss is complete on disk."""
        staging = target.with_name(f"{target.name}#{secrets.randbelow(10**9) + 1}")
        try:
            handle = await asyncio.to_thread(_open_staging, staging)
        except OSError as exc:
            raise _unavailable("write", key, exc) from exc
        writer = ChunkWorker(partial(_write_all, handle), depth=8, name="storage-write")
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
            if isinstance(exc, OSError):
                raise _unavailable("write", key, exc) from exc
            raise
        return size

    async def _abort_put(self, key: str, put: asyncio.Future[int], feed: _Feed) -> None:
        """Make the running upload fail from the iterator side so obstore aborts it, and
        wait for that, repeated cancellations notwithstanding, for at most abort_timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._abort_timeout
        feed.abort()
        while not put.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.warning(
                    "storage did not abort the cancelled upload of %s within %.0f s; an "
                    "unfinished multipart upload may remain (see the lifecycle rule in "
                    "docs/storage.md)",
                    key,
                    self._abort_timeout,
                )
                put.cancel()
                break
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({put}, timeout=remaining)
        if put.done() and not put.cancelled():
            put.exception()  # retrieved: the caller gets CancelledError, not this

    async def delete(self, key: str) -> None:
        validate_key(key)
        try:
            await obstore.delete_async(self._store, key)
        except (FileNotFoundError, ObstoreNotFound):
            return
        except (ObstoreError, OSError) as exc:
            raise _unavailable("delete", key, exc) from exc

    # -- reads -------------------------------------------------------------------------------

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)``. A range reaching past the end of the object is cut at
        the end; a range starting at or after the end (or ``start == end``) yields nothing.
        Raises BlobNotFound when the object does not exist, ValueError for ``start < 0`` or
        ``end < start``."""
        validate_key(key)
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range [{start}, {end})")
        if end is not None and end == start:
            if await self.stat(key) is None:
                raise BlobNotFound(key)
            return
        options: GetOptions | None = None
        if end is not None:
            options = {"range": (start, end)}
        elif start > 0:
            options = {"range": {"offset": start}}
        try:
            result = await obstore.get_async(self._read_store, key, options=options)
        except (FileNotFoundError, ObstoreNotFound):
            raise BlobNotFound(key) from None
        except (ObstoreError, OSError) as exc:
            if options is None:
                raise _unavailable("read", key, exc) from exc
            # An unsatisfiable range (at or past the end) is an error to S3 and to the
            # local store alike; tell it apart from a real failure by the object's size.
            info = await self.stat(key)
            if info is None:
                raise BlobNotFound(key) from None
            if start >= info.size:
                return
            raise _unavailable("read", key, exc) from exc
        try:
            async for chunk in result.stream(min_chunk_size=READ_CHUNK_SIZE):
                for piece in _pieces(chunk):
                    yield piece
        except (FileNotFoundError, ObstoreNotFound):
            raise BlobNotFound(key) from None
        except (ObstoreError, OSError) as exc:
            raise _unavailable("read", key, exc) from exc

    async def stat(self, key: str) -> BlobInfo | None:
        validate_key(key)
        try:
            meta = await obstore.head_async(self._store, key)
        except (FileNotFoundError, ObstoreNotFound):
            return None
        except (ObstoreError, OSError) as exc:
            raise _unavailable("stat", key, exc) from exc
        return _info(meta)

    async def list(self, prefix: str) -> AsyncIterator[BlobInfo]:
        """Objects whose key starts with ``prefix`` (plain string prefix: ``a/b`` matches
        ``a/b/c`` and ``a/bc``), in no particular order. In-progress writes are not listed."""
        validate_prefix(prefix)
        # obstore lists whole path segments; list the folder the prefix is in and filter.
        folder = prefix.rpartition("/")[0]
        try:
            stream = obstore.list(self._store, folder or None, chunk_size=1000)
            async for batch in stream:
                for meta in batch:
                    if meta["path"].startswith(prefix):
                        yield _info(meta)
        except (FileNotFoundError, ObstoreNotFound):
            return
        except (ObstoreError, OSError) as exc:
            raise _unavailable("list", prefix or "/", exc) from exc

    # -- operations --------------------------------------------------------------------------

    async def probe(self) -> None:
        # One key per store instance, probes one at a time: a probe cut off by a timeout
        # may still land its write later, and the next successful probe removes it, so
        # hung storage leaves at most one object under .health/ per replica.
        key = self._probe_key
        payload = secrets.token_bytes(64)
        try:
            async with asyncio.timeout(self._probe_timeout), self._probe_lock:
                await self._round_trip(key, payload)
        except TimeoutError:
            raise StorageUnavailable(
                f"storage did not complete a write, read and delete within "
                f"{self._probe_timeout:g} s ({self._description})"
            ) from None

    async def _round_trip(self, key: str, payload: bytes) -> None:
        try:
            await obstore.put_async(self._store, key, payload, use_multipart=False)
        except (ObstoreError, OSError) as exc:
            raise _unavailable("probe write", key, exc) from exc
        try:
            try:
                result = await obstore.get_async(self._store, key)
                stored = bytes(await result.bytes_async())
            except (FileNotFoundError, ObstoreNotFound, ObstoreError, OSError) as exc:
                raise _unavailable("probe read", key, exc) from exc
            if stored != payload:
                raise StorageUnavailable(
                    f"storage returned different bytes than were written ({self._description})"
                )
        finally:
            await self.delete(key)

    def local_path(self, key: str) -> Path | None:
        """The file of ``key`` under a file:// root (whether or not it exists yet);
        None for every other backend."""
        validate_key(key)
        if not isinstance(self._location, FileLocation):
            return None
        return self._location.root.joinpath(*key.split("/"))

    async def remove_incomplete_writes(self, prefix: str) -> int:
        """file://: delete the staging files ``<name>#<n>`` under ``prefix`` and return
        their number. Object stores: 0, because obstore cannot list unfinished multipart
        uploads; an abandoned one (the process was killed mid-upload) stays invisible and
        is removed by the bucket's AbortIncompleteMultipartUpload lifecycle rule."""
        validate_prefix(prefix)
        if not isinstance(self._location, FileLocation):
            return 0
        root = self._location.root
        try:
            return await asyncio.to_thread(_remove_staging_files, root, prefix)
        except OSError as exc:
            raise _unavailable("clean-up", prefix or "/", exc) from exc

    async def close(self) -> None:
        """Nothing to release: obstore's connection pools go with the store objects."""


# -- construction ----------------------------------------------------------------------------


# The server and its commands wait at most this long for any single answer of the storage;
# the whole transfer of a file is bounded by --storage-io-timeout in the services.
STORAGE_IDLE_TIMEOUT = 60.0


def idle_timeout_for(transfer_seconds: float) -> float:
    """The storage client's wait for one answer, given the limit for a whole transfer."""
    return min(STORAGE_IDLE_TIMEOUT, transfer_seconds)


def open_blob_store(
    url: str,
    *,
    io_timeout: float | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY,
) -> ObstoreBlobStore:
    """Open the store ``url`` names (see :mod:`backup_repository.storage.urls`).

    ``io_timeout`` (seconds, default 30) bounds connecting and each wait for bytes from the
    storage; the health probe is bounded by it too (default 10 s). A file:// folder is
    created when missing. Raises ValueError for a URL that cannot be used and
    StorageUnavailable when obstore refuses to build the store (e.g. an unreadable
    credentials file). Nothing is sent over the network here.
    """
    if io_timeout is not None and io_timeout <= 0:
        raise ValueError("io_timeout must be positive")
    location = parse_storage_url(url)
    description = redact_storage_url(url)
    idle = io_timeout if io_timeout is not None else DEFAULT_IO_TIMEOUT

    def make(store: ObjectStore, read_store: ObjectStore | None = None) -> ObstoreBlobStore:
        return ObstoreBlobStore(
            store,
            read_store=read_store,
            location=location,
            description=description,
            part_size=part_size,
            upload_concurrency=upload_concurrency,
            probe_timeout=io_timeout if io_timeout is not None else DEFAULT_PROBE_TIMEOUT,
        )

    try:
        if isinstance(location, FileLocation):
            if location.root.exists() and not location.root.is_dir():
                raise ValueError("file:// storage URL names something that is not a folder")
            return make(LocalStore(location.root, mkdir=True))
        if isinstance(location, MemoryLocation):
            return make(MemoryStore())
        retry = _retry_config(idle)
        request_timeout = timedelta(seconds=max(REQUEST_TIMEOUT, idle))
        return make(
            _remote_store(location, _client_options(location, idle, request_timeout), retry),
            read_store=_remote_store(
                location, _client_options(location, idle, DOWNLOAD_REQUEST_TIMEOUT), retry
            ),
        )
    except (ObstoreError, OSError) as exc:
        raise StorageUnavailable(f"cannot open storage {description}: {_first_line(exc)}") from exc


def _client_options(
    location: S3Location | GCSLocation | AzureLocation, idle: float, overall: timedelta
) -> ClientConfig:
    options: ClientConfig = {
        "connect_timeout": timedelta(seconds=min(CONNECT_TIMEOUT, idle)),
        "read_timeout": timedelta(seconds=idle),
        "timeout": overall,
    }
    if isinstance(location, S3Location | AzureLocation) and location.allow_http:
        options["allow_http"] = True
    return options


def _retry_config(idle: float) -> RetryConfig:
    # A handful of quick retries rides out a storage hiccup; a dead endpoint is reported
    # within seconds rather than after object_store's default of up to 3 minutes.
    return {
        "max_retries": 4,
        "retry_timeout": timedelta(seconds=max(2 * idle, 10.0)),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=2),
            "base": 2,
        },
    }


def _remote_store(
    location: StorageLocation, client_options: ClientConfig, retry: RetryConfig
) -> ObjectStore:
    if isinstance(location, S3Location):
        s3_options: dict[str, Any] = {
            "region": location.region,
            "virtual_hosted_style_request": location.virtual_hosted,
        }
        if location.endpoint is not None:
            s3_options["endpoint"] = location.endpoint
        return S3Store(
            location.bucket,
            prefix=location.prefix or None,
            client_options=client_options,
            retry_config=retry,
            **s3_options,
        )
    if isinstance(location, GCSLocation):
        return GCSStore(
            location.bucket,
            prefix=location.prefix or None,
            client_options=client_options,
            retry_config=retry,
        )
    if isinstance(location, AzureLocation):
        azure_options: dict[str, Any] = {}
        if location.account_name is not None:
            azure_options["account_name"] = location.account_name
        if location.account_key is not None:
            azure_options["account_key"] = location.account_key
        if location.endpoint is not None:
            azure_options["endpoint"] = location.endpoint
        if location.use_emulator:
            azure_options["use_emulator"] = True
        return AzureStore(
            location.container,
            prefix=location.prefix or None,
            client_options=client_options,
            retry_config=retry,
            **azure_options,
        )
    raise ValueError(f"not a remote storage location: {type(location).__name__}")


# -- helpers ---------------------------------------------------------------------------------


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


def _pieces(chunk: bytes) -> Iterator[bytes]:
    """Split chunks larger than twice READ_CHUNK_SIZE (the memory store returns whole
    objects) so consumers see bounded pieces."""
    if len(chunk) <= 2 * READ_CHUNK_SIZE:
        yield chunk
        return
    view = memoryview(chunk)
    for offset in range(0, len(chunk), READ_CHUNK_SIZE):
        yield bytes(view[offset : offset + READ_CHUNK_SIZE])


def _info(meta: ObjectMeta) -> BlobInfo:
    return BlobInfo(
        key=meta["path"],
        size=meta["size"],
        last_modified=meta["last_modified"],
        etag=meta["e_tag"],
    )


_URL_QUERY = re.compile(r"(https?://[^\s?]*)\?[^\s]*")


def _first_line(exc: BaseException) -> str:
    """The first line of obstore's message, with URL query strings cut off (an Azure SAS
    token or a presigned signature would travel there)."""
    text = str(exc).strip().splitlines()
    line = _URL_QUERY.sub(r"\1?…", text[0]) if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _unavailable(action: str, key: str, exc: BaseException) -> StorageUnavailable:
    """A StorageUnavailable naming the operation, the key and obstore's first line (the
    request and status, never credentials: signatures travel in headers obstore does not
    print)."""
    if isinstance(exc, StorageError):
        return StorageUnavailable(str(exc))
    return StorageUnavailable(f"storage {action} of {key!r} failed: {_first_line(exc)}")


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


def _remove_staging_files(root: Path, prefix: str) -> int:
    folder = prefix.rpartition("/")[0]
    start = root.joinpath(*folder.split("/")) if folder else root
    removed = 0
    for directory, _dirs, files in os.walk(start):
        for name in files:
            if not _STAGING_NAME.search(name):
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
