"""The client's SHA-256 checks and its aborted uploads, against a small fake server that can
lie: it announces a wrong SHA-256 for a download, records a wrong one for an upload, or
announces none (as the reference server does); and it tells whether an upload body was
complete (the final chunk arrived) or cut off."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from client_support import KeyFiles, encrypt_to, run_bm

pytestmark = pytest.mark.e2e

PLAINTEXT = b"the real backup\n" * 5000


@dataclass
class Behaviour:
    stored: bytes = b""  # what a download sends
    announce: str | None = None  # X-Content-SHA256 of a download; None: no header
    record: str | None = "actual"  # sha256 an upload reports: "actual", a fixed value, None
    uploads: list[tuple[bool, int]] = field(default_factory=list)  # (complete, bytes read)
    answer_early: bool = False  # answer 200 after the first chunk, before the body ended


def _read_chunked(handler: BaseHTTPRequestHandler) -> tuple[bool, bytes]:
    """Decode a chunked body; (False, bytes so far) if the client went away before the
    final zero-length chunk."""
    body = bytearray()
    while True:
        line = handler.rfile.readline(100)
        if not line:
            return False, bytes(body)
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            handler.rfile.readline(100)
            return True, bytes(body)
        chunk = handler.rfile.read(size + 2)
        if len(chunk) < size + 2:
            return False, bytes(body + chunk[:size])
        body += chunk[:size]


def make_handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _json(self, status: int, document: dict[str, Any]) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.endswith("/version"):
                self._json(200, {"status": True, "data": {"versions": []}})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(behaviour.stored)))
            if behaviour.announce is not None:
                self.send_header("X-Content-SHA256", behaviour.announce)
            self.end_headers()
            self.wfile.write(behaviour.stored)

        def do_POST(self) -> None:
            if behaviour.answer_early:
                size = int(self.rfile.readline(100).strip(), 16)
                self.rfile.read(size)
                behaviour.uploads.append((False, size))
                self.close_connection = True
                self._json(200, {"status": True, "data": {"version": {"versionNumber": 1}}})
                return
            complete, body = _read_chunked(self)
            behaviour.uploads.append((complete, len(body)))
            if not complete:
                self.close_connection = True
                return
            actual = hashlib.sha256(body).hexdigest()
            recorded = actual if behaviour.record == "actual" else behaviour.record
            version = {"versionNumber": 1, "filesize": len(body), "filename": "x-1"}
            if recorded is not None:
                version["sha256"] = recorded
            self._json(200, {"status": True, "data": {"version": version}})

    return Handler


@pytest.fixture
def fake() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(behaviour))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", behaviour
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def global_args(url: str) -> list[str]:
    return ["-u", url, "-i", "db", "-t", "token"]


@pytest.fixture
def sealed(keys: KeyFiles) -> bytes:
    return encrypt_to(keys.alice_public, PLAINTEXT)


# -- downloads that do not match what the server announced ------------------------------------


def test_restore_refuses_a_download_that_does_not_match_before_running_the_command(
    fake: tuple[str, Behaviour], keys: KeyFiles, sealed: bytes, tmp_path: Path
) -> None:
    url, behaviour = fake
    behaviour.stored = sealed
    behaviour.announce = hashlib.sha256(b"something else").hexdigest()
    marker = tmp_path / "started"
    result = run_bm(
        "restore", *global_args(url), "-c", f"touch '{marker}'; cat > /dev/null",
        "-p", str(keys.alice_secret),
    )  # fmt: skip
    assert result.returncode == 6, result.stderr
    assert "SHA-256 mismatch" in result.stderr
    assert not marker.exists()


def test_restore_stream_stops_the_command_when_the_download_does_not_match(
    fake: tuple[str, Behaviour], keys: KeyFiles, sealed: bytes, tmp_path: Path
) -> None:
    url, behaviour = fake
    behaviour.stored = sealed
    behaviour.announce = hashlib.sha256(b"something else").hexdigest()
    out = tmp_path / "out"
    result = run_bm(
        "restore", *global_args(url), "-c", f"cat > '{out}'", "-p", str(keys.alice_secret),
        "--stream",
    )  # fmt: skip
    assert result.returncode == 6, result.stderr
    assert "SHA-256 mismatch" in result.stderr
    # In stream mode the command may have read the data already; it is stopped and the
    # run is reported as failed, never as a finished restore.
    assert "restore finished" not in result.stderr


@pytest.mark.parametrize("with_key", [True, False], ids=["decrypted", "encrypted"])
def test_download_keeps_nothing_when_the_download_does_not_match(
    fake: tuple[str, Behaviour], keys: KeyFiles, sealed: bytes, tmp_path: Path, with_key: bool
) -> None:
    url, behaviour = fake
    behaviour.stored = sealed
    behaviour.announce = "0" * 64
    folder = tmp_path / "downloads"
    folder.mkdir()
    key = ["-p", str(keys.alice_secret)] if with_key else []
    result = run_bm("download", *global_args(url), "--save-path", str(folder / "out"), *key)
    assert result.returncode == 6, result.stderr
    assert list(folder.iterdir()) == []


def test_a_download_without_announced_sha256_is_restored_with_a_warning(
    fake: tuple[str, Behaviour], keys: KeyFiles, sealed: bytes, tmp_path: Path
) -> None:
    url, behaviour = fake
    behaviour.stored = sealed  # like the reference server: no checksum header
    out = tmp_path / "out"
    result = run_bm(
        "restore", *global_args(url), "-c", f"cat > '{out}'", "-p", str(keys.alice_secret)
    )
    assert result.returncode == 0, result.stderr
    assert "announced no SHA-256" in result.stderr
    assert out.read_bytes() == PLAINTEXT


def test_a_matching_announced_sha256_restores(
    fake: tuple[str, Behaviour], keys: KeyFiles, sealed: bytes, tmp_path: Path
) -> None:
    url, behaviour = fake
    behaviour.stored = sealed
    behaviour.announce = hashlib.sha256(sealed).hexdigest().upper()  # hex case does not matter
    target = tmp_path / "out"
    result = run_bm(
        "download", *global_args(url), "--save-path", str(target), "-p", str(keys.alice_secret)
    )
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == PLAINTEXT


# -- uploads ----------------------------------------------------------------------------------


def test_make_fails_when_the_server_records_another_sha256(
    fake: tuple[str, Behaviour], keys: KeyFiles
) -> None:
    url, behaviour = fake
    behaviour.record = "f" * 64
    result = run_bm("make", *global_args(url), "-c", "echo data", "-k", str(keys.alice_public))
    assert result.returncode == 6, result.stderr
    assert "the stored backup is damaged" in result.stderr
    assert behaviour.uploads[0][0] is True


def test_make_warns_when_the_server_reports_no_sha256(
    fake: tuple[str, Behaviour], keys: KeyFiles
) -> None:
    url, behaviour = fake
    behaviour.record = None
    result = run_bm("make", *global_args(url), "-c", "echo data", "-k", str(keys.alice_public))
    assert result.returncode == 0, result.stderr
    assert "reported no SHA-256" in result.stderr


def test_a_failed_command_never_sends_the_final_chunk(
    fake: tuple[str, Behaviour], keys: KeyFiles, tmp_path: Path
) -> None:
    url, behaviour = fake
    data = tmp_path / "data"
    data.write_bytes(PLAINTEXT)
    result = run_bm(
        "make", *global_args(url), "-c", f"cat '{data}'; exit 1", "-k", str(keys.alice_public)
    )
    assert result.returncode == 3, result.stderr
    # The server got the whole encrypted message but not the end of the body.
    assert len(behaviour.uploads) == 1
    complete, received = behaviour.uploads[0]
    assert complete is False
    assert received > 0


def test_a_successful_upload_is_chunked_and_complete(
    fake: tuple[str, Behaviour], keys: KeyFiles, tmp_path: Path
) -> None:
    url, behaviour = fake
    data = tmp_path / "data"
    data.write_bytes(PLAINTEXT)
    result = run_bm("make", *global_args(url), "-c", f"cat '{data}'", "-k", str(keys.alice_public))
    assert result.returncode == 0, result.stderr
    assert behaviour.uploads[0][0] is True


def test_an_answer_before_the_body_ended_is_not_a_success(
    fake: tuple[str, Behaviour], keys: KeyFiles
) -> None:
    url, behaviour = fake
    behaviour.answer_early = True
    result = run_bm(
        "make", *global_args(url), "-c", "head -c 20000000 /dev/urandom",
        "-k", str(keys.alice_public), "--compress-level", "0",
    )  # fmt: skip
    assert result.returncode == 5, result.stderr
    assert "answered before the whole backup was sent" in result.stderr
