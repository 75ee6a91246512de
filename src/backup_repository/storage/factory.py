"""Opening the store a storage URL names: a folder of this machine (file://, on the
standard library, :mod:`~backup_repository.storage.filesystem`), or the obstore store of
its backend (memory, S3, GCS, Azure) with the timeouts and retries of the storage client.
obstore is imported only when such a store is opened: a server on file:// storage never
loads it.

Timeouts: ``io_timeout`` bounds connecting and every wait for response bytes. Downloads
have no overall deadline (a slow client may legitimately take hours, and the HTTP client's
default of 30 s per request would cut them), so remote backends get a second store for
reads; other requests get ``REQUEST_TIMEOUT``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from backup_repository.storage.base import StorageUnavailable
from backup_repository.storage.defaults import (
    DEFAULT_PART_SIZE,
    DEFAULT_PROBE_TIMEOUT,
    DEFAULT_UPLOAD_CONCURRENCY,
    check_write_settings,
)
from backup_repository.storage.errors import first_line
from backup_repository.storage.filesystem import FileBlobStore
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

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

    from backup_repository.storage.objectstore import ObstoreBlobStore

DEFAULT_IO_TIMEOUT: Final = 30.0
CONNECT_TIMEOUT: Final = 5.0
REQUEST_TIMEOUT: Final = 300.0
"""Overall limit of one request other than a download (a part upload, a HEAD, a DELETE)."""
DOWNLOAD_REQUEST_TIMEOUT: Final = timedelta(days=30)
"""Effectively none: a download is bounded by the idle timeout, not by its total time."""

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
) -> FileBlobStore | ObstoreBlobStore:
    """Open the store ``url`` names (see :mod:`backup_repository.storage.urls`).

    ``io_timeout`` (seconds, default 30) bounds connecting and each wait for bytes from the
    storage; the health probe is bounded by it too (default 10 s). A file:// folder is
    created when missing. Raises ValueError for a URL that cannot be used and
    StorageUnavailable when the store cannot be built (a folder that cannot be created,
    an unreadable credentials file). Nothing is sent over the network here.
    """
    if io_timeout is not None and io_timeout <= 0:
        raise ValueError("io_timeout must be positive")
    check_write_settings(part_size, upload_concurrency)
    location = parse_storage_url(url)
    description = redact_storage_url(url)
    probe_timeout = io_timeout if io_timeout is not None else DEFAULT_PROBE_TIMEOUT
    if isinstance(location, FileLocation):
        if location.root.exists() and not location.root.is_dir():
            raise ValueError("file:// storage URL names something that is not a folder")
        try:
            location.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"cannot open storage {description}: {first_line(exc)}"
            ) from exc
        return FileBlobStore(location, description=description, probe_timeout=probe_timeout)

    from obstore.exceptions import BaseError as ObstoreError
    from obstore.store import MemoryStore

    from backup_repository.storage.objectstore import ObstoreBlobStore

    idle = io_timeout if io_timeout is not None else DEFAULT_IO_TIMEOUT

    def make(store: ObjectStore, read_store: ObjectStore | None = None) -> ObstoreBlobStore:
        return ObstoreBlobStore(
            store,
            read_store=read_store,
            location=location,
            description=description,
            part_size=part_size,
            upload_concurrency=upload_concurrency,
            probe_timeout=probe_timeout,
        )

    try:
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
        raise StorageUnavailable(f"cannot open storage {description}: {first_line(exc)}") from exc


def _client_options(
    location: S3Location | GCSLocation | AzureLocation, idle: float, overall: timedelta
) -> ClientConfig:
    options: ClientConfig = {
        "connect_timeout": timedelta(seconds=min(CONNECT_TIMEOUT, idle)),
        "read_timeout": timedelta(seconds=idle),
        "timeout": overall,
    }
    if location.allow_http:
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
    from obstore.store import AzureStore, GCSStore, S3Store

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
