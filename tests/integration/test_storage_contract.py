"""The BlobStore contract, run on a local folder (file://, the store on the standard
library), a real S3 server (SeaweedFS, s3://), Azurite (azblob://) and fake-gcs-server
(gs://): atomic streaming writes, ranged reads, listing, deletes, the health probe, crash
clean-up, key validation and bounded memory. The file:// store answers as obstore's
LocalStore (which it replaced) on the same folder, and loads no part of obstore. Plus the
storage URL parser."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from backup_repository.storage.base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    StorageUnavailable,
)
from backup_repository.storage.defaults import DEFAULT_PART_SIZE, READ_CHUNK_SIZE
from backup_repository.storage.factory import open_blob_store
from backup_repository.storage.filesystem import FileBlobStore
from backup_repository.storage.objectstore import ObstoreBlobStore
from backup_repository.storage.urls import (
    AzureLocation,
    FileLocation,
    GCSLocation,
    MemoryLocation,
    S3Location,
    parse_storage_url,
    redact_storage_url,
)
from cloud_emulators import RUNNING
from storage_fixtures import S3TestEndpoint, child_command, free_ports

MiB = 1024 * 1024
Store = FileBlobStore | ObstoreBlobStore
STAGING = re.compile(r"#[0-9]+$")
BAD_KEYS = [
    "",
    "/abs",
    "../escape",
    "a/../../escape",
    "a/..",
    "..",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    "a\\..\\b",
    "a\nb",
    "a/b\x00",
    "x#1",
    "a/b#12/c",
    "k" * 1025,
]


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
async def store(storage_url: str) -> AsyncIterator[Store]:
    blob_store = open_blob_store(storage_url, io_timeout=10)
    try:
        yield blob_store
    finally:
        await blob_store.close()


def is_s3(store: Store) -> bool:
    return isinstance(store.location, S3Location)


def s3_prefix(store: Store) -> str:
    location = store.location
    assert isinstance(location, S3Location | AzureLocation | GCSLocation)
    return location.prefix + "/"


def unfinished_writes(store: Store, prefix: str = "") -> list[str]:
    """What storage holds of writes never completed under the store's prefix + ``prefix``:
    unfinished S3 or GCS multipart uploads, Azure blobs with uncommitted blocks only."""
    location = store.location
    full = s3_prefix(store) + prefix
    if isinstance(location, S3Location):
        return S3TestEndpoint(endpoint=_endpoint_of(store)).incomplete_uploads(full)
    if isinstance(location, AzureLocation):
        uncommitted: list[str] = RUNNING["azure"].uncommitted_blobs(full)
        return uncommitted
    assert isinstance(location, GCSLocation)
    incomplete: list[str] = RUNNING["gcs"].incomplete_uploads(full)
    return incomplete


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]
        await asyncio.sleep(0)


async def read_all(store: BlobStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start, end)])


async def keys(store: BlobStore, prefix: str) -> list[str]:
    return sorted([info.key async for info in store.list(prefix)])


def staging_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if STAGING.search(path.name)]


def remove_tree(folder: Path) -> None:
    shutil.rmtree(folder)


def names_under(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*"))


def root_of(store: Store) -> Path:
    location = store.location
    assert isinstance(location, FileLocation)
    return location.root


class QuotaExceeded(Exception):
    """Stands for the upload pipeline's own errors raised from inside the stream."""


async def failing_after(data: bytes, error: BaseException) -> AsyncIterator[bytes]:
    async for chunk in chunks_of(data):
        yield chunk
    raise error


async def assert_nothing_left(store: Store, key: str) -> None:
    assert await store.stat(key) is None
    assert await keys(store, "") == []
    if isinstance(store.location, FileLocation):
        assert staging_files(root_of(store)) == []
    elif isinstance(store.location, AzureLocation):
        # Azure has no abort: staged blocks stay uncommitted (invisible to reads and
        # listings) until the next write of the key or Azure's clean-up after 7 days.
        assert unfinished_writes(store) in ([], [s3_prefix(store) + key])
    else:
        assert unfinished_writes(store) == []


def _endpoint_of(store: Store) -> str:
    location = store.location
    assert isinstance(location, S3Location)
    assert location.endpoint is not None
    return location.endpoint.removeprefix("http://")


# -- writes and reads ------------------------------------------------------------------------


async def test_put_stat_read(store: Store) -> None:
    data = os.urandom(300_000)
    written = await store.put_stream("coll/file-1.tar.gz.gpg", chunks_of(data))
    assert written == len(data)
    info = await store.stat("coll/file-1.tar.gz.gpg")
    assert info is not None
    assert (info.key, info.size) == ("coll/file-1.tar.gz.gpg", len(data))
    assert info.last_modified is not None
    assert info.etag
    assert await read_all(store, "coll/file-1.tar.gz.gpg") == data


async def test_ranged_reads(store: Store) -> None:
    data = os.urandom(10_000)
    await store.put_stream("c/f", chunks_of(data, 4096))
    size = len(data)
    assert await read_all(store, "c/f", 1234) == data[1234:]
    assert await read_all(store, "c/f", 100, 5000) == data[100:5000]
    assert await read_all(store, "c/f", 0, 1) == data[:1]
    assert await read_all(store, "c/f", size - 1) == data[-1:]
    assert await read_all(store, "c/f", size - 1, size) == data[-1:]
    # A range reaching past the end is cut at the end.
    assert await read_all(store, "c/f", size - 3, size + 100) == data[-3:]
    # Empty ranges: start == end, or starting at or after the end.
    assert await read_all(store, "c/f", 500, 500) == b""
    assert await read_all(store, "c/f", size) == b""
    assert await read_all(store, "c/f", size + 10, size + 20) == b""


async def test_invalid_ranges_are_refused(store: Store) -> None:
    await store.put_stream("c/f", chunks_of(b"0123456789"))
    with pytest.raises(ValueError, match="range"):
        await read_all(store, "c/f", -1)
    with pytest.raises(ValueError, match="range"):
        await read_all(store, "c/f", 5, 4)


async def test_empty_object(store: Store) -> None:
    assert await store.put_stream("c/empty", chunks_of(b"")) == 0
    info = await store.stat("c/empty")
    assert info is not None
    assert info.size == 0
    assert await read_all(store, "c/empty") == b""
    assert await read_all(store, "c/empty", 0, 10) == b""


async def test_overwrite_replaces_the_object(store: Store) -> None:
    await store.put_stream("c/f", chunks_of(b"first version"))
    await store.put_stream("c/f", chunks_of(b"second"))
    assert await read_all(store, "c/f") == b"second"


async def test_multipart_upload_larger_than_the_part_size(store: Store) -> None:
    size = 20 * MiB + 12345  # three parts: 8 MiB, 8 MiB and the rest
    assert size > 2 * DEFAULT_PART_SIZE
    digest = hashlib.sha256()

    async def generated() -> AsyncIterator[bytes]:
        remaining = size
        while remaining:
            piece = os.urandom(min(256 * 1024, remaining))
            digest.update(piece)
            remaining -= len(piece)
            yield piece

    assert await store.put_stream("c/big", generated()) == size
    info = await store.stat("c/big")
    assert info is not None
    assert info.size == size
    if is_s3(store):
        assert info.etag is not None
        assert info.etag.strip('"').endswith("-3"), info.etag  # S3's multipart ETag: 3 parts

    read_back = hashlib.sha256()
    largest = 0
    total = 0
    async for chunk in store.read("c/big"):
        read_back.update(chunk)
        largest = max(largest, len(chunk))
        total += len(chunk)
    assert total == size
    assert read_back.hexdigest() == digest.hexdigest()
    assert largest <= 2 * READ_CHUNK_SIZE

    tail = await read_all(store, "c/big", size - 1000)
    assert len(tail) == 1000


async def test_failing_iterator_leaves_nothing_behind(store: Store) -> None:
    error = QuotaExceeded("filesize reached allowed limit")
    with pytest.raises(QuotaExceeded) as raised:
        # More than one part, so that a multipart upload / staging file really existed.
        await store.put_stream("c/failed", failing_after(os.urandom(18 * MiB), error))
    assert raised.value is error  # the caller's own exception, not a wrapper
    await assert_nothing_left(store, "c/failed")


async def test_observe_sees_every_chunk_in_order_off_the_event_loop(
    store: Store,
) -> None:
    data = os.urandom(9 * MiB + 4321)  # more than one part of a multipart upload
    digest = hashlib.sha256()
    threads: set[int] = set()

    def observe(chunk: bytes) -> None:
        threads.add(threading.get_ident())
        digest.update(chunk)

    assert await store.put_stream("c/observed", chunks_of(data), observe=observe) == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert threading.get_ident() not in threads
    assert await read_all(store, "c/observed") == data


async def test_failing_observe_fails_the_write_and_leaves_nothing_behind(
    store: Store,
) -> None:
    error = QuotaExceeded("refused by the observer")
    seen = 0

    def observe(chunk: bytes) -> None:
        nonlocal seen
        seen += len(chunk)
        if seen > 6 * MiB:
            raise error

    with pytest.raises(QuotaExceeded) as raised:
        await store.put_stream("c/failed", chunks_of(os.urandom(18 * MiB)), observe=observe)
    assert raised.value is error
    await assert_nothing_left(store, "c/failed")


async def test_failure_in_the_first_chunk_leaves_nothing_behind(store: Store) -> None:
    with pytest.raises(QuotaExceeded):
        await store.put_stream("c/failed", failing_after(b"", QuotaExceeded("empty")))
    await assert_nothing_left(store, "c/failed")


async def test_failed_overwrite_keeps_the_previous_object(store: Store) -> None:
    await store.put_stream("c/f", chunks_of(b"the good backup"))
    with pytest.raises(QuotaExceeded):
        await store.put_stream("c/f", failing_after(os.urandom(9 * MiB), QuotaExceeded()))
    assert await read_all(store, "c/f") == b"the good backup"


async def test_cancelled_write_is_aborted(store: Store) -> None:
    """A timeout around put_stream (cancellation) must not leave an unfinished multipart
    upload or a staging file behind, even while the stream is waiting for data."""
    sent_first_part = asyncio.Event()  # two parts were handed to obstore

    async def stalls_after_two_parts() -> AsyncIterator[bytes]:
        async for chunk in chunks_of(os.urandom(17 * MiB), 1 * MiB):
            yield chunk
        sent_first_part.set()
        await asyncio.Event().wait()  # the client stops sending
        yield b"never"

    async def upload_with_a_timeout() -> None:
        async with asyncio.timeout(2):  # as the upload pipeline bounds its uploads
            await store.put_stream("c/stalled", stalls_after_two_parts())

    with pytest.raises(TimeoutError):
        await upload_with_a_timeout()
    assert sent_first_part.is_set()
    await assert_nothing_left(store, "c/stalled")


# -- listing and deleting --------------------------------------------------------------------


async def test_list_by_prefix(store: Store) -> None:
    for key in ("a/b/c", "a/bc", "a/x", "b/y", "top"):
        await store.put_stream(key, chunks_of(key.encode()))
    assert await keys(store, "") == ["a/b/c", "a/bc", "a/x", "b/y", "top"]
    assert await keys(store, "a/") == ["a/b/c", "a/bc", "a/x"]
    assert await keys(store, "a/b") == ["a/b/c", "a/bc"]  # a plain string prefix
    assert await keys(store, "a/b/") == ["a/b/c"]
    assert await keys(store, "t") == ["top"]
    assert await keys(store, "missing/") == []
    infos = [info async for info in store.list("b/")]
    assert infos == [
        BlobInfo(key="b/y", size=3, last_modified=infos[0].last_modified, etag=infos[0].etag)
    ]


async def test_delete(store: Store) -> None:
    await store.put_stream("c/f", chunks_of(b"data"))
    await store.delete("c/f")
    assert await store.stat("c/f") is None
    assert await keys(store, "c/") == []
    await store.delete("c/f")  # already gone: not an error
    await store.delete("c/never-existed")


async def test_missing_objects(store: Store) -> None:
    assert await store.stat("c/missing") is None
    with pytest.raises(BlobNotFound):
        await read_all(store, "c/missing")
    with pytest.raises(BlobNotFound):
        await read_all(store, "c/missing", 10, 20)
    with pytest.raises(BlobNotFound):
        await read_all(store, "c/missing", 5, 5)


# -- probe -----------------------------------------------------------------------------------


async def test_probe_succeeds_and_cleans_up(store: Store) -> None:
    await store.probe()
    await store.probe()
    assert await keys(store, "") == []


def closed_gcs_endpoint(folder: Path) -> Path:
    """A service-account file naming a loopback port nothing listens on."""
    (closed_port,) = free_ports(1)
    path = folder / "closed-service-account.json"
    path.write_text(
        json.dumps(
            {
                "gcs_base_url": f"http://127.0.0.1:{closed_port}",
                "disable_oauth": True,
                "client_email": "",
                "private_key": "",
                "private_key_id": "",
            }
        )
    )
    return path


async def test_probe_fails_on_unusable_storage(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if storage_url.startswith("azblob://"):
        (closed_port,) = free_ports(1)
        monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", f"http://127.0.0.1:{closed_port}")
        broken = open_blob_store(storage_url, io_timeout=3)
    elif storage_url.startswith("gs://"):
        monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT", str(closed_gcs_endpoint(tmp_path)))
        broken = open_blob_store(storage_url, io_timeout=3)
    elif storage_url.startswith("s3://"):
        (closed_port,) = free_ports(1)  # nothing listens there any more
        url = (
            f"s3://br-test?endpoint=127.0.0.1:{closed_port}&disableSSL=true"
            "&s3ForcePathStyle=true&region=us-east-1"
        )
        broken = open_blob_store(url, io_timeout=3)
    else:
        root = tmp_path / "gone"
        broken = open_blob_store(root.as_uri(), io_timeout=3)
        root.rmdir()
        root.write_text("a file where the storage folder was")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as raised:
        await broken.probe()
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert "probe" in message or "within" in message
    assert "br-test-secret" not in message


async def test_operations_on_an_unreachable_endpoint_raise_storage_unavailable() -> None:
    (closed_port,) = free_ports(1)
    broken = open_blob_store(
        f"s3://bkt?endpoint=127.0.0.1:{closed_port}&disableSSL=true&s3ForcePathStyle=true",
        io_timeout=2,
    )
    with pytest.raises(StorageUnavailable, match="stat"):
        await broken.stat("a/b")
    with pytest.raises(StorageUnavailable, match="read"):
        await read_all(broken, "a/b")
    with pytest.raises(StorageUnavailable, match="delete"):
        await broken.delete("a/b")
    with pytest.raises(StorageUnavailable, match="list"):
        await keys(broken, "a/")
    with pytest.raises(StorageUnavailable, match="write"):
        await broken.put_stream("a/b", chunks_of(b"x" * 100))


async def test_wrong_credentials_raise_storage_unavailable(
    s3_storage_url: S3TestEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key")
    broken = open_blob_store(s3_storage_url.url_for("wrong-credentials"), io_timeout=5)
    with pytest.raises(StorageUnavailable) as raised:
        await broken.probe()
    assert "not-the-secret-key" not in str(raised.value)


async def test_storage_failure_during_a_write(
    storage_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Storage refusing the write is StorageUnavailable, the caller's stream is no longer
    pulled, and nothing is left: on S3 and Azure the credentials are refused from the first
    request, on GCS (the emulator takes no credentials) the endpoint is closed, on file://
    the target folder vanishes while the parts are being written."""
    if storage_url.startswith("s3://"):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key")
    elif storage_url.startswith("azblob://"):
        monkeypatch.setenv("AZURE_STORAGE_KEY", "bm90LXRoZS1zZWNyZXQta2V5")  # not-the-secret-key
    elif storage_url.startswith("gs://"):
        monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT", str(closed_gcs_endpoint(tmp_path)))
    store = open_blob_store(storage_url)
    pulled = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(64):
            pulled += 1
            if pulled == 10 and isinstance(store.location, FileLocation):
                remove_tree(store.location.root / "c")
            yield os.urandom(1 * MiB)

    with pytest.raises(StorageUnavailable, match="write of 'c/f' failed") as raised:
        await store.put_stream("c/f", stream())
    assert "not-the-secret-key" not in str(raised.value)
    if isinstance(store.location, FileLocation):
        assert pulled == 64  # the folder is only missed when the staging file is renamed
        assert staging_files(root_of(store)) == []
    else:
        assert pulled <= 2 * DEFAULT_PART_SIZE // MiB + 1
    monkeypatch.undo()
    await assert_nothing_left(open_blob_store(storage_url), "c/f")


# -- keys, local paths -----------------------------------------------------------------------


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_unsafe_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(ValueError, match="storage key"):
        await store.put_stream(key, chunks_of(b"x"))
    with pytest.raises(ValueError, match="storage key"):
        await store.stat(key)
    with pytest.raises(ValueError, match="storage key"):
        await read_all(store, key)
    with pytest.raises(ValueError, match="storage key"):
        await store.delete(key)
    with pytest.raises(ValueError, match="storage key"):
        store.local_path(key)
    with pytest.raises(ValueError, match="storage key"):
        await store.remove_leftovers("a/", [key])
    assert await keys(store, "") == []


@pytest.mark.parametrize("prefix", ["/", "../", "a//", "a/../", "..", "/a/"])
async def test_unsafe_prefixes_are_refused(store: Store, prefix: str) -> None:
    with pytest.raises(ValueError, match="storage prefix"):
        await keys(store, prefix)
    with pytest.raises(ValueError, match="storage prefix"):
        await store.remove_incomplete_writes(prefix)
    with pytest.raises(ValueError, match="storage prefix"):
        await store.remove_leftovers(prefix, [])


async def test_traversal_cannot_write_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "inner" / "storage"
    store = open_blob_store(root.as_uri())
    for key in ("../outside", "../../outside", "a/../../outside"):
        with pytest.raises(ValueError, match="storage key"):
            await store.put_stream(key, chunks_of(b"x"))
    assert names_under(tmp_path) == ["inner", "storage"]


async def test_local_path(store: Store) -> None:
    await store.put_stream("coll/v1.gpg", chunks_of(b"payload"))
    path = store.local_path("coll/v1.gpg")
    if not isinstance(store.location, FileLocation):
        assert path is None
    else:
        assert path == root_of(store) / "coll" / "v1.gpg"
        assert path.read_bytes() == b"payload"


# -- the file:// store and obstore's LocalStore -------------------------------------------


def tricky_folder(root: Path) -> None:
    """Objects in sub-folders, names with spaces, '%', '#' and non-ASCII letters, staging
    files of both shapes, an empty folder, links to a file, to a folder and to nothing."""
    for key in (
        "a/b/c",
        "a/bc",
        "a/x",
        "a/x#",
        "a/x#ab",
        "a/w#1#2",
        "a/v#12",
        "a/#5",
        "a/sp ace",
        "a/p%41",
        "a/\u00e9",
        "b/y",
        "d#3/f",
        "deep/1/2/3/4",
        ".health/p",
        "top",
    ):
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.encode() * 3)
    (root / "empty" / "folder").mkdir(parents=True)
    (root / "b" / "link-file").symlink_to(root / "a" / "x")
    (root / "b" / "link-folder").symlink_to(root / "a" / "b")
    (root / "b" / "dangling").symlink_to(root / "nowhere")


async def local_store_list(root: Path, prefix: str) -> list[BlobInfo]:
    """What the store listed when it was obstore's LocalStore (the folder of the prefix,
    filtered by the prefix)."""
    import obstore
    from obstore.store import LocalStore

    folder = prefix.rpartition("/")[0]
    found = []
    async for batch in obstore.list(LocalStore(root), folder or None, chunk_size=1000):
        for meta in batch:
            if meta["path"].startswith(prefix):
                found.append(
                    BlobInfo(meta["path"], meta["size"], meta["last_modified"], meta["e_tag"])
                )
    return found


async def local_store_stat(root: Path, key: str) -> BlobInfo | None:
    import obstore
    from obstore.exceptions import NotFoundError
    from obstore.store import LocalStore

    try:
        meta = await obstore.head_async(LocalStore(root), key)
    except (NotFoundError, FileNotFoundError):
        return None
    return BlobInfo(meta["path"], meta["size"], meta["last_modified"], meta["e_tag"])


@pytest.mark.parametrize(
    "prefix",
    ["", "a/", "a/b", "a/b/", "a/x", "b/", "t", "top", "top/", "deep/1/", "empty/", "missing/"],
)
async def test_the_file_store_lists_as_obstores_local_store_did(
    tmp_path: Path, prefix: str
) -> None:
    """Same keys, in the same order (depth first, as the folder gives its names), with the
    same sizes, times and ETags; staging files left out, links followed."""
    root = tmp_path / "storage"
    store = open_blob_store(root.as_uri())
    tricky_folder(root)
    listed = [info async for info in store.list(prefix)]
    assert listed == await local_store_list(root, prefix)
    if prefix == "":
        assert {info.key for info in listed} >= {"b/link-file", "b/link-folder/c", "a/x#ab"}
        assert not {"a/v#12", "a/#5", "b/dangling"} & {info.key for info in listed}


async def test_the_file_store_stats_and_reads_as_obstores_local_store_did(
    tmp_path: Path,
) -> None:
    root = tmp_path / "storage"
    store = open_blob_store(root.as_uri())
    tricky_folder(root)
    for key in ("a/x", "a/\u00e9", "a/x#ab", "b/link-file", "deep/1/2/3/4", "top"):
        info = await store.stat(key)
        assert info is not None
        assert info == await local_store_stat(root, key)
        content = root.joinpath(*key.split("/")).read_bytes()  # through the link, for one
        assert await read_all(store, key) == content
        assert await read_all(store, key, 2, 5) == content[2:5]
    # Folders, dangling links and missing files are no objects.
    for key in ("a/b", "b/link-folder", "b/dangling", "empty/folder", "missing"):
        assert await store.stat(key) is None
        assert await local_store_stat(root, key) is None
        with pytest.raises(BlobNotFound):
            await read_all(store, key)
        with pytest.raises(BlobNotFound):
            await read_all(store, key, 1, 1)
    # A path through a file is a failing storage, not a missing object, as before.
    with pytest.raises(StorageUnavailable, match="stat of 'top/x'"):
        await store.stat("top/x")
    with pytest.raises(StorageUnavailable, match="read of 'top/x'"):
        await read_all(store, "top/x")


def make_oddity(folder: Path, oddity: str) -> None:
    folder.mkdir()
    if oddity == "control character":
        (folder / "new\nline").write_bytes(b"x")
    elif oddity == "not UTF-8":
        with open(os.path.join(os.fsencode(folder), b"bad\xff"), "wb") as made:
            made.write(b"x")
    else:
        (folder / "self").symlink_to(folder)


@pytest.mark.parametrize("oddity", ["control character", "not UTF-8", "loop of links"])
async def test_a_file_that_cannot_be_a_key_fails_the_listing_as_before(
    tmp_path: Path, oddity: str
) -> None:
    root = tmp_path / "storage"
    store = open_blob_store(root.as_uri())
    await store.put_stream("kept/v1", chunks_of(b"a version"))
    make_oddity(root / "odd", oddity)
    with pytest.raises(StorageUnavailable, match="list of 'odd/' failed"):
        await keys(store, "odd/")
    with pytest.raises(StorageUnavailable, match="list of '/' failed"):
        await keys(store, "")
    with pytest.raises(Exception, match=r"path|walk"):
        await local_store_list(root, "odd/")
    # Other folders are not walked: their listing is unaffected.
    assert await keys(store, "kept/") == ["kept/v1"]


async def test_a_listing_is_one_trip_to_a_thread_per_thousand_objects(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    store = open_blob_store(root.as_uri())
    (root / "c").mkdir()
    for number in range(2500):
        (root / "c" / f"v{number}").write_bytes(b"")
    loop = asyncio.get_running_loop()
    hops = 0
    run_in_executor = loop.run_in_executor

    def counted(*args: Any) -> Any:
        nonlocal hops
        hops += 1
        return run_in_executor(*args)

    loop.run_in_executor = counted  # type: ignore[method-assign,assignment]
    try:
        assert len(await keys(store, "c/")) == 2500
        first = await anext(aiter(store.list("c/")))  # left unfinished: nothing stays open
    finally:
        loop.run_in_executor = run_in_executor  # type: ignore[method-assign]
    assert first.key.startswith("c/v")
    assert hops == 3 + 1


def test_a_file_store_loads_no_part_of_obstore(tmp_path: Path) -> None:
    result = subprocess.run(
        child_command("modules", (tmp_path / "storage").as_uri(), "coll/v1.gpg"),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    loaded = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert "backup_repository.storage.factory" in loaded
    assert "obstore" not in loaded
    assert "backup_repository.storage.objectstore" not in loaded


# -- crash clean-up --------------------------------------------------------------------------


async def test_remove_incomplete_writes_after_a_crash(storage_url: str) -> None:
    store = open_blob_store(storage_url)
    await store.put_stream("coll/kept", chunks_of(b"an earlier version"))
    await store.put_stream("other/kept", chunks_of(b"another collection"))
    child = await asyncio.create_subprocess_exec(
        *child_command("slow-put", storage_url, "coll/v2.gpg"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        crashed_upload = await _wait_for_a_write_in_progress(store, child)
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await asyncio.wait_for(child.communicate(), 10)
    assert child.returncode == -signal.SIGKILL

    # The half-written object is invisible either way.
    assert await store.stat("coll/v2.gpg") is None
    assert await keys(store, "coll/") == ["coll/kept"]

    if is_s3(store):
        # obstore cannot list unfinished multipart uploads: they stay (invisible) for the
        # bucket's AbortIncompleteMultipartUpload lifecycle rule.
        assert await store.remove_incomplete_writes("coll/") == 0
        endpoint = S3TestEndpoint(endpoint=_endpoint_of(store))
        assert endpoint.abort_incomplete_uploads(s3_prefix(store)) == 1
    elif not isinstance(store.location, FileLocation):
        # Azure: uncommitted blocks, dropped by Azure after 7 days (or replaced by the next
        # write of the key); GCS: an unfinished XML multipart upload, like S3's.
        assert await store.remove_incomplete_writes("coll/") == 0
        assert unfinished_writes(store, "coll/") == [s3_prefix(store) + "coll/v2.gpg"]
    else:
        assert crashed_upload.exists()
        assert await store.remove_incomplete_writes("other/") == 0
        assert crashed_upload.exists()
        assert await store.remove_incomplete_writes("coll/") == 1
        assert staging_files(root_of(store)) == []
        assert await store.remove_incomplete_writes("") == 0
    assert await read_all(store, "coll/kept") == b"an earlier version"
    assert await read_all(store, "other/kept") == b"another collection"


async def test_remove_leftovers_takes_the_keys_and_the_staging_files_under_the_prefix(
    store: Store,
) -> None:
    """An upload's clean-up in one call: the objects named (a missing one is no error) and
    what interrupted writes left under the prefix go; nothing else does."""
    await store.put_stream("coll/kept", chunks_of(b"a recorded version"))
    await store.put_stream("coll/v2.gpg", chunks_of(b"stored, never recorded"))
    await store.put_stream("other/v2.gpg", chunks_of(b"another collection's"))
    staging: list[Path] = []
    if isinstance(store.location, FileLocation):
        root = root_of(store)
        staging = [root / "coll" / "v3.gpg#12345", root / "other" / "v3.gpg#678"]
        for path in staging:
            path.write_bytes(b"half of an interrupted write")
    removed = await store.remove_leftovers("coll/", ["coll/v2.gpg", "coll/v9.gpg"])
    assert removed == (1 if staging else 0)
    assert await keys(store, "coll/") == ["coll/kept"]
    assert await keys(store, "other/") == ["other/v2.gpg"]
    assert await read_all(store, "coll/kept") == b"a recorded version"
    if staging:
        assert staging_files(root_of(store)) == [staging[1]]
    # Nothing left to remove: still no error.
    assert await store.remove_leftovers("coll/", ["coll/v2.gpg"]) == 0


async def _wait_for_a_write_in_progress(store: Store, child: asyncio.subprocess.Process) -> Path:
    """Wait until the child has stored at least one part: a staging file of 8 MiB or more
    (file://), or an unfinished multipart upload or uncommitted blocks (object stores)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if child.returncode is not None:
            _, stderr = await child.communicate()
            pytest.fail(f"the writing child exited early: {stderr.decode()[-2000:]}")
        if not isinstance(store.location, FileLocation):
            if unfinished_writes(store, "coll/"):
                return Path()
        else:
            found = [p for p in staging_files(root_of(store)) if p.stat().st_size >= 8 * MiB]
            if found:
                return found[0]
        await asyncio.sleep(0.05)
    pytest.fail("the child did not start writing within 30 s")


# -- memory ----------------------------------------------------------------------------------


def test_memory_stays_bounded_for_a_256_mib_stream(storage_url: str) -> None:
    size = 256 * MiB
    result = subprocess.run(
        child_command("measure-put", storage_url, "coll/huge.gpg", str(size)),
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    figures: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert figures["written"] == size
    assert figures["read"] == size
    assert figures["sha256_read"] == figures["sha256_sent"]
    print(
        f"peak RSS growth: put {figures['put_growth_kib'] / 1024:.1f} MiB, "
        f"read {figures['read_growth_kib'] / 1024:.1f} MiB"
    )
    assert figures["put_growth_kib"] < 64 * 1024
    assert figures["read_growth_kib"] < 32 * 1024


# -- other backends --------------------------------------------------------------------------


async def test_memory_store_basics() -> None:
    store = open_blob_store("memory://")
    data = os.urandom(5 * MiB)
    await store.put_stream("c/f", chunks_of(data))
    pieces = [chunk async for chunk in store.read("c/f")]
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) <= 2 * READ_CHUNK_SIZE
    assert await read_all(store, "c/f", 10, 20) == data[10:20]
    with pytest.raises(QuotaExceeded):
        await store.put_stream("c/g", failing_after(data, QuotaExceeded()))
    assert await keys(store, "") == ["c/f"]
    await store.probe()
    assert store.local_path("c/f") is None
    assert await store.remove_incomplete_writes("") == 0
    # Every open is a store of its own.
    assert await keys(open_blob_store("memory://"), "") == []


def test_cloud_stores_open_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "account")
    monkeypatch.setenv("AZURE_STORAGE_KEY", "a2V5")
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    for url in ("gs://bucket/prefix", "azblob://container", "s3://bucket?region=eu-west-1"):
        store = open_blob_store(url)
        assert store.local_path("a/b") is None
        assert "a2V5" not in repr(store)


def test_open_refuses_bad_settings(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("not a folder")
    with pytest.raises(ValueError, match="not a folder"):
        open_blob_store(afile.as_uri())
    with pytest.raises(ValueError, match="io_timeout"):
        open_blob_store("memory://", io_timeout=0)
    with pytest.raises(ValueError, match="part_size"):
        open_blob_store("memory://", part_size=1024)


def test_open_reports_unusable_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.delenv("GOOGLE_SERVICE_ACCOUNT", raising=False)  # set by gcs_storage_url
    with pytest.raises(StorageUnavailable, match="cannot open storage gs://bucket"):
        open_blob_store("gs://bucket")


# -- storage URLs ----------------------------------------------------------------------------


def parse(url: str, **env: str) -> Any:
    return parse_storage_url(url, environ=env)


def test_file_urls(tmp_path: Path) -> None:
    assert parse("file:///var/lib/backups") == FileLocation(Path("/var/lib/backups"))
    assert parse("file://localhost/srv/x/") == FileLocation(Path("/srv/x"))
    assert parse("file:///with%20space") == FileLocation(Path("/with space"))
    assert parse((tmp_path / "a b").as_uri()) == FileLocation(tmp_path / "a b")
    root = tmp_path / "created" / "deeper"
    open_blob_store(root.as_uri())
    assert root.is_dir()


def test_memory_urls() -> None:
    assert parse("memory://") == MemoryLocation()
    assert parse("mem://") == MemoryLocation()


def test_s3_urls_in_the_reference_syntax() -> None:
    assert parse(
        "s3://backups?endpoint=minio:9000&disableSSL=true&s3ForcePathStyle=true&region=eu-central-1"
    ) == S3Location(
        bucket="backups",
        prefix="",
        region="eu-central-1",
        endpoint="http://minio:9000",
        virtual_hosted=False,
        allow_http=True,
    )
    # An endpoint with its own scheme keeps it.
    location = parse("s3://backups?endpoint=https://s3.example.org&s3ForcePathStyle=1")
    assert location.endpoint == "https://s3.example.org"
    assert not location.allow_http
    location = parse("s3://backups?endpoint=http://10.0.0.5:9000/&s3ForcePathStyle=true")
    assert (location.endpoint, location.allow_http) == ("http://10.0.0.5:9000", True)
    # Without s3ForcePathStyle the bucket goes in the host name, as the AWS SDK does.
    location = parse("s3://backups/nightly/?endpoint=s3.example.org")
    assert location.endpoint == "https://backups.s3.example.org"
    assert location.virtual_hosted
    assert location.prefix == "nightly"
    # ... unless the endpoint is an IP address or the bucket cannot be a TLS host name.
    assert not parse("s3://backups?endpoint=127.0.0.1:9000&disableSSL=true").virtual_hosted
    assert not parse("s3://my.backups?endpoint=s3.example.org").virtual_hosted


def test_s3_region_and_aws_defaults() -> None:
    location = parse("s3://backups")
    assert location == S3Location(
        bucket="backups",
        prefix="",
        region="us-east-1",
        endpoint=None,
        virtual_hosted=True,
        allow_http=False,
    )
    assert parse("s3://backups", AWS_DEFAULT_REGION="eu-west-2").region == "eu-west-2"
    assert parse("s3://backups", AWS_REGION="eu-west-3", AWS_DEFAULT_REGION="x").region == (
        "eu-west-3"
    )
    assert parse("s3://backups?region=ap-south-1", AWS_REGION="eu-west-3").region == ("ap-south-1")
    assert parse("s3://backups?awssdk=v2").bucket == "backups"
    location = parse("s3://backups?disableSSL=true&region=eu-west-1")
    assert location.endpoint == "http://backups.s3.eu-west-1.amazonaws.com"


def test_gs_and_azure_urls() -> None:
    assert parse("gs://bucket/a/b") == GCSLocation(bucket="bucket", prefix="a/b")
    assert parse("gs://bucket?access_id=x&private_key_path=/k") == GCSLocation("bucket", "")
    assert parse("gs://bucket/p?disableSSL=true") == GCSLocation("bucket", "p", allow_http=True)
    assert not parse("gs://bucket?disableSSL=false").allow_http
    location = parse("azblob://container", AZURE_STORAGE_ACCOUNT="acc", AZURE_STORAGE_KEY="k")
    assert location == AzureLocation(
        container="container", prefix="", account_name="acc", account_key="k"
    )
    assert "k'" not in repr(location)  # the key is kept out of repr()
    # obstore reads its own variable names; a Go-Cloud key does not override them.
    location = parse(
        "azblob://container",
        AZURE_STORAGE_ACCOUNT_NAME="acc",
        AZURE_STORAGE_ACCOUNT_KEY="own",
        AZURE_STORAGE_KEY="go",
    )
    assert location.account_key is None
    location = parse(
        "azblob://container?domain=blob.core.chinacloudapi.cn", AZURE_STORAGE_ACCOUNT="acc"
    )
    assert location.endpoint == "https://acc.blob.core.chinacloudapi.cn"
    location = parse(
        "azblob://container?protocol=http&domain=azurite:10000", AZURE_STORAGE_ACCOUNT="a"
    )
    assert (location.endpoint, location.allow_http) == ("http://a.azurite:10000", True)
    assert parse("azblob://container?localemulator=true").use_emulator


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        (" s3://bucket", "empty or padded"),
        ("ftp://host/x", "scheme ftp:// is not supported"),
        ("/var/lib/backups", "without a scheme"),
        ("file://relative/path", "absolute path"),
        ("file:///a/../b", "'..'"),
        ("file:///x?create_dir=true", "unknown query key"),
        ("memory://name", "no bucket"),
        ("s3://", "must name a bucket"),
        ("s3://bucket?endpoint=x&unknownKey=1", "unknown query key\\(s\\) unknownKey"),
        ("s3://bucket?profile=prod", "unknown query key"),
        ("s3://bucket?disableSSL=maybe", "true or false"),
        ("s3://bucket?s3ForcePathStyle=yes", "true or false"),
        ("s3://bucket?awssdk=v3", "v1 or v2"),
        ("s3://bucket?region=a&region=b", "repeats"),
        ("s3://bucket?endpoint=ftp://host", "http:// or https://"),
        ("s3://bucket?endpoint=http://host/path", "host with an optional port"),
        ("s3://bucket/a//b", "empty"),
        ("s3://bucket/../b", "'..'"),
        ("s3://bucket:9000", "port"),
        ("s3://bucket#frag", "fragment"),
        ("gs://bucket?anonymous=true", "unknown query key"),
        ("gs://bucket?disableSSL=yes", "true or false"),
        ("azblob://container?cdn=true", "unknown query key"),
        ("azblob://container?protocol=ftp", "http or https"),
        ("azblob://container?domain=example.org", "AZURE_STORAGE_ACCOUNT"),
        ("s3://b%2Fc", "invalid bucket name"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(url)


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIAEXAMPLE:supersecret@bucket",
        "s3://bucket?endpoint=http://AKIAEXAMPLE:supersecret@host:9000",
    ],
)
def test_credentials_in_urls_are_refused_without_echo(url: str) -> None:
    with pytest.raises(ValueError, match="credentials") as raised:
        parse(url)
    assert "supersecret" not in str(raised.value)
    assert "supersecret" not in redact_storage_url(url)


def test_errors_never_echo_query_values() -> None:
    with pytest.raises(ValueError, match="unknown query key") as raised:
        parse("s3://bucket?secret_access_key=hunter2")
    assert "hunter2" not in str(raised.value)
    assert "secret_access_key" in str(raised.value)


def test_redact_storage_url() -> None:
    url = "s3://bucket/p?endpoint=minio:9000&disableSSL=true&region=eu-central-1"
    assert redact_storage_url(url) == url
    assert redact_storage_url("s3://key:secret@bucket?token=abc&region=x") == (
        "s3://***@bucket?token=***&region=x"
    )
    assert redact_storage_url("file:///var/lib/backups") == "file:///var/lib/backups"
    assert redact_storage_url("s3://[bad") == "<malformed storage URL>"
