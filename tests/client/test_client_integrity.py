"""The client's SHA-256 checks and its aborted uploads, against the real server (real GnuPG
keys, file:// storage).

A damaged download is made the way it happens: the stored object is changed on disk, so the
server sends bytes that no longer match the SHA-256 it recorded at the upload. What the real
server never does is done by a relay in front of it (relay.py): one byte of an upload
damaged on its way, answers in the reference server's shape (no checksum headers on a
download, no SHA-256 for an upload), a broken proxy answering an upload before its body
ended. The relay also shows how an upload body arrived: chunked, and whether the final chunk
came."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_support import KeyFiles, LiveServer, encrypt_to, run_bm
from relay import Relay, relay_to

from support import wait_until

pytestmark = pytest.mark.e2e

PLAINTEXT = b"the real backup\n" * 5000
CHECKSUM_HEADERS = {"x-content-sha256", "digest", "repr-digest", "etag"}


def server_args(url: str, live_server: LiveServer, collection: str) -> list[str]:
    return ["-u", url, "-i", collection, "-t", live_server.token()]


@pytest.fixture
def stored(live_server: LiveServer, collection: str, keys: KeyFiles) -> bytes:
    """The encrypted PLAINTEXT, uploaded to the real server as version 1 of ``collection``
    (not compressed, so that there is plenty of ciphertext to damage)."""
    sealed = encrypt_to(keys.alice_public, PLAINTEXT, compress=False)
    live_server.upload(collection, sealed)
    return sealed


@pytest.fixture
def relay(live_server: LiveServer) -> Iterator[Relay]:
    with relay_to(live_server.url) as relay:
        yield relay


def damage_stored_object(live_server: LiveServer, collection: str) -> None:
    """Flip one bit in the middle of the stored object, in place (its size stays)."""
    [path] = live_server.stored_objects(collection)
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.seek(size // 2)
        byte = file.read(1)
        file.seek(size // 2)
        file.write(bytes([byte[0] ^ 0x01]))
    assert path.stat().st_size == size


def assert_nothing_stored(live_server: LiveServer, collection: str) -> None:
    assert live_server.versions(collection) == []
    wait_until(lambda: live_server.stored_objects(collection) == [], timeout=15)


# -- downloads that do not match what the server announced ------------------------------------


def test_restore_refuses_a_download_that_does_not_match_before_running_the_command(
    live_server: LiveServer, collection: str, keys: KeyFiles, stored: bytes, tmp_path: Path
) -> None:
    damage_stored_object(live_server, collection)
    marker = tmp_path / "started"
    result = run_bm(
        "restore", *server_args(live_server.url, live_server, collection),
        "-c", f"touch '{marker}'; cat > /dev/null", "-p", str(keys.alice_secret),
    )  # fmt: skip
    assert result.returncode == 6, result.stderr
    assert "SHA-256 mismatch" in result.stderr
    assert not marker.exists()


def test_restore_stream_stops_the_command_when_the_download_does_not_match(
    live_server: LiveServer, collection: str, keys: KeyFiles, stored: bytes, tmp_path: Path
) -> None:
    damage_stored_object(live_server, collection)
    out = tmp_path / "out"
    result = run_bm(
        "restore", *server_args(live_server.url, live_server, collection),
        "-c", f"cat > '{out}'", "-p", str(keys.alice_secret), "--stream",
    )  # fmt: skip
    assert result.returncode == 6, result.stderr
    assert "SHA-256 mismatch" in result.stderr
    # In stream mode the command may have read the data already; it is stopped and the
    # run is reported as failed, never as a finished restore.
    assert "restore finished" not in result.stderr


@pytest.mark.parametrize("with_key", [True, False], ids=["decrypted", "encrypted"])
def test_download_keeps_nothing_when_the_download_does_not_match(
    live_server: LiveServer,
    collection: str,
    keys: KeyFiles,
    stored: bytes,
    tmp_path: Path,
    with_key: bool,
) -> None:
    damage_stored_object(live_server, collection)
    folder = tmp_path / "downloads"
    folder.mkdir()
    key = ["-p", str(keys.alice_secret)] if with_key else []
    result = run_bm(
        "download", *server_args(live_server.url, live_server, collection),
        "--save-path", str(folder / "out"), *key,
    )  # fmt: skip
    assert result.returncode == 6, result.stderr
    assert "SHA-256 mismatch" in result.stderr
    assert list(folder.iterdir()) == []


def test_a_download_without_announced_sha256_is_restored_with_a_warning(
    live_server: LiveServer,
    collection: str,
    keys: KeyFiles,
    stored: bytes,
    relay: Relay,
    tmp_path: Path,
) -> None:
    relay.drop_response_headers = CHECKSUM_HEADERS  # as the reference server sends it
    out = tmp_path / "out"
    result = run_bm(
        "restore", *server_args(relay.url, live_server, collection),
        "-c", f"cat > '{out}'", "-p", str(keys.alice_secret),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "announced no SHA-256" in result.stderr
    assert out.read_bytes() == PLAINTEXT


def test_a_matching_announced_sha256_restores(
    live_server: LiveServer, collection: str, keys: KeyFiles, stored: bytes, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    result = run_bm(
        "download", *server_args(live_server.url, live_server, collection),
        "--save-path", str(target), "-p", str(keys.alice_secret),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "download verified:" in result.stderr
    assert f"SHA-256 {hashlib.sha256(stored).hexdigest()}" in result.stderr
    assert target.read_bytes() == PLAINTEXT


# -- uploads ----------------------------------------------------------------------------------


def test_make_fails_when_the_server_records_another_sha256(
    live_server: LiveServer, collection: str, keys: KeyFiles, relay: Relay
) -> None:
    relay.flip_last_upload_byte = True  # damaged between the client and the server
    result = run_bm(
        "make", *server_args(relay.url, live_server, collection),
        "-c", "echo data", "-k", str(keys.alice_public),
    )  # fmt: skip
    assert result.returncode == 6, result.stderr
    assert "the stored backup is damaged" in result.stderr
    assert [upload.complete for upload in relay.uploads] == [True]
    [version] = live_server.versions(collection)  # what the server recorded
    assert version["filesize"] == relay.uploads[0].size


def test_make_warns_when_the_server_reports_no_sha256(
    live_server: LiveServer, collection: str, keys: KeyFiles, relay: Relay
) -> None:
    relay.drop_version_fields = {"sha256"}  # the reference server's answer has none
    result = run_bm(
        "make", *server_args(relay.url, live_server, collection),
        "-c", "echo data", "-k", str(keys.alice_public),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "reported no SHA-256" in result.stderr
    assert len(live_server.versions(collection)) == 1


def test_a_failed_command_never_sends_the_final_chunk(
    live_server: LiveServer, collection: str, keys: KeyFiles, relay: Relay, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.write_bytes(PLAINTEXT)
    result = run_bm(
        "make", *server_args(relay.url, live_server, collection),
        "-c", f"cat '{data}'; exit 1", "-k", str(keys.alice_public),
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    # The whole encrypted message went out, but not the end of the body ...
    [upload] = relay.uploads
    assert upload.chunked
    assert upload.complete is False
    assert upload.size > 0
    # ... so the server, which had it all, recorded nothing and kept nothing.
    assert_nothing_stored(live_server, collection)


def test_a_successful_upload_is_chunked_and_complete(
    live_server: LiveServer, collection: str, keys: KeyFiles, relay: Relay, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.write_bytes(PLAINTEXT)
    result = run_bm(
        "make", *server_args(relay.url, live_server, collection),
        "-c", f"cat '{data}'", "-k", str(keys.alice_public),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [upload] = relay.uploads
    assert upload.chunked
    assert upload.complete
    [version] = live_server.versions(collection)
    [path] = live_server.stored_objects(collection)
    assert version["filesize"] == upload.size == path.stat().st_size
    assert version["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_answer_before_the_body_ended_is_not_a_success(
    live_server: LiveServer, collection: str, keys: KeyFiles, relay: Relay
) -> None:
    relay.answer_early = True  # a broken proxy: 200 after the first chunk
    result = run_bm(
        "make", *server_args(relay.url, live_server, collection),
        "-c", "head -c 20000000 /dev/urandom", "-k", str(keys.alice_public),
        "--compress-level", "0",
    )  # fmt: skip
    assert result.returncode == 5, result.stderr
    assert "answered before the whole backup was sent" in result.stderr
    assert [upload.complete for upload in relay.uploads] == [False]
    assert live_server.versions(collection) == []
