"""Upload bodies sent as forms, against the real server over loopback: what a form carries
besides the file is capped and refused as soon as a cap is passed, every byte of a form
counts against the collection's limit (its Content-Length is checked before the body is
read, as a raw body's), and the collection's lock is free after each refusal."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest

from gpg_fixtures import SAMPLES_DIR
from support import ServerProcess, collection_doc, start_server, user_doc, write_config

pytestmark = pytest.mark.e2e

LOGIN = "/api/stable/auth/login"
BASE = "/api/stable/repository/collection"
SAMPLE = (SAMPLES_DIR / "symmetric.gpg").read_bytes()
BOUNDARY = "form-limits-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
URLENCODED = "application/x-www-form-urlencoded"
# The limits under test (http/bodies.py).
MAX_FIELD_NAME = 1024
MAX_OTHER_FIELDS = 64 * 1024
MAX_PARTS = 64
MIB = 1024 * 1024
# "tight" takes SAMPLE in a form (about 140 bytes of multipart framing) but no more.
TIGHT_LIMIT = len(SAMPLE) + 300


def collection(name: str, **spec: Any) -> dict[str, Any]:
    doc = collection_doc(name)
    doc["spec"].update(spec)
    return doc


def documents() -> list[dict[str, Any]]:
    return [
        user_doc("admin", "admin-pass", ["systemAdmin"]),
        collection("db"),  # 1M per version, 5M in all, 3 versions: 3 MiB for the first
        collection("big", maxOneVersionSize="1G", maxCollectionSize="2G", maxBackupsCount=2),
        collection(
            "tight",
            maxOneVersionSize=TIGHT_LIMIT,
            maxCollectionSize=TIGHT_LIMIT,
            maxBackupsCount=1,
        ),
    ]


def launch(workdir: Path, db_url: str | None = None) -> ServerProcess:
    write_config(workdir / "config", documents())
    return start_server(workdir, workdir / "config", db_url=db_url)


def check_log(server: ServerProcess) -> None:
    log = server.log()
    assert "Traceback" not in log, log
    assert "unhandled error" not in log, log


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch(tmp_path_factory.mktemp("form-limits"))
    try:
        yield process
    finally:
        process.stop()
    check_log(process)


def token_of(server: ServerProcess) -> str:
    response = httpx.post(server.url + LOGIN, json={"username": "admin", "password": "admin-pass"})
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["token"]
    return token


def multipart(file: bytes, *others: tuple[str, bytes]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value
        + b"\r\n"
        for name, value in others
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="b.gpg"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + file
        + b"\r\n"
    )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def urlencoded(file: bytes) -> bytes:
    return b"file=" + quote_from_bytes(file, safe="").encode()


def upload(
    server: ServerProcess, token: str, collection_id: str, body: bytes, content_type: str
) -> httpx.Response:
    return httpx.post(
        f"{server.url}{BASE}/{collection_id}/version",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        timeout=30,
    )


def chunked_upload(
    server: ServerProcess, token: str, collection_id: str, body: bytes, content_type: str
) -> httpx.Response:
    """The same without Content-Length (chunked), so only the bytes counted can refuse it."""

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    return httpx.post(
        f"{server.url}{BASE}/{collection_id}/version",
        content=pieces(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        timeout=30,
    )


def assert_uploads(server: ServerProcess, token: str, collection_id: str) -> None:
    """A normal upload goes through at once: the lock is free."""
    response = upload(server, token, collection_id, SAMPLE, "application/octet-stream")
    assert response.status_code == 200, response.text


def head(collection_id: str, token: str, content_type: str, length: int) -> bytes:
    return (
        f"POST {BASE}/{collection_id}/version HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _complete(data: bytes) -> bool:
    top, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in top.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


def answer(received: bytes) -> tuple[int, dict[str, Any]]:
    assert received.startswith(b"HTTP/1.1 "), received[:300]
    return int(received[9:12]), json.loads(received.partition(b"\r\n\r\n")[2])


def ask_and_wait(server: ServerProcess, request: bytes, within: float = 5.0) -> bytes:
    """Send ``request`` (a head and the start of a body, less than its Content-Length) and
    wait for the answer without sending the rest; b"" if none came ``within`` seconds."""
    port = int(server.url.rsplit(":", 1)[1])
    received = b""
    deadline = time.monotonic() + within
    with socket.create_connection(("127.0.0.1", port), timeout=within) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        while not _complete(received) and time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    return received


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def test_a_100_mib_urlencoded_body_without_an_equals_sign_is_refused_at_once(
    server: ServerProcess,
) -> None:
    token = token_of(server)
    total = 100 * MIB
    chunk = b"a" * (256 * 1024)
    port = int(server.url.rsplit(":", 1)[1])
    pid = server.process.pid
    before = vm_rss_kib(pid)
    peak = before
    stop = threading.Event()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(head("big", token, URLENCODED, total))
                for _ in range(total // len(chunk)):
                    if stop.is_set():
                        return
                    sock.sendall(chunk)

        sender = threading.Thread(target=send, daemon=True)
        started = time.monotonic()
        sender.start()
        sock.settimeout(0.1)
        while not _complete(received) and time.monotonic() - started < 60:
            peak = max(peak, vm_rss_kib(pid))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
        elapsed = time.monotonic() - started
        stop.set()
    sender.join(timeout=10)
    status, envelope = answer(received)
    assert status == 400, envelope
    assert "field name is longer than 1024 bytes" in envelope["error"], envelope
    # Before the cap: about 36 s of event-loop CPU and 190 MiB more RSS.
    assert elapsed < 5, elapsed
    assert peak - before < 20 * 1024, (before, peak)
    assert_uploads(server, token, "big")


LARGE_OTHER_PART = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="note"\r\n\r\n'.encode()
    + b"a" * MAX_OTHER_FIELDS
)
OVER_CAP = [
    pytest.param(
        URLENCODED, b"a" * (MAX_FIELD_NAME + 1), "field name is longer", id="urlencoded-long-name"
    ),
    pytest.param(
        URLENCODED,
        b"note=" + b"a" * MAX_OTHER_FIELDS,
        "other than 'file' take more than 64 KiB",
        id="urlencoded-long-value",
    ),
    pytest.param(
        URLENCODED,
        b"&" * (MAX_OTHER_FIELDS + 1),
        "other than 'file' take more than 64 KiB",
        id="urlencoded-only-separators",
    ),
    pytest.param(
        URLENCODED,
        b"x=1&" * (MAX_OTHER_FIELDS // 4 + 1),
        "other than 'file' take more than 64 KiB",
        id="urlencoded-many-small-fields",
    ),
    pytest.param(
        MULTIPART,
        f"--{BOUNDARY}\r\nX-".encode() + b"h" * 5000,
        "Maximum header size exceeded",
        id="multipart-long-header-name",
    ),
    pytest.param(
        MULTIPART,
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + b"a" * 5000,
        "Maximum header size exceeded",
        id="multipart-long-header-value",
    ),
    pytest.param(
        MULTIPART,
        LARGE_OTHER_PART,
        "other than 'file' take more than 64 KiB",
        id="multipart-large-other-part",
    ),
    pytest.param(
        MULTIPART,
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="note"\r\n\r\nv\r\n'.encode()
        * (MAX_PARTS + 1),
        f"more than {MAX_PARTS} parts",
        id="multipart-many-parts",
    ),
]


@pytest.mark.parametrize(("content_type", "start", "message"), OVER_CAP)
def test_form_fields_over_their_caps_are_refused_before_the_rest_is_sent(
    server: ServerProcess, content_type: str, start: bytes, message: str
) -> None:
    token = token_of(server)
    # The body would be 2 MiB (within the collection's 3 MiB); only its start is sent.
    started = time.monotonic()
    received = ask_and_wait(server, head("db", token, content_type, 2 * MIB) + start)
    assert received, "no answer before the rest of the body"
    status, envelope = answer(received)
    assert status == 400, envelope
    assert envelope["status"] is False
    assert message in envelope["error"], envelope
    assert "send the backup in the field 'file'" in envelope["error"], envelope
    assert time.monotonic() - started < 5
    assert_uploads(server, token, "db")


@pytest.mark.parametrize("content_type", [MULTIPART, URLENCODED])
def test_a_form_whose_content_length_passes_the_limit_is_413_before_it_is_read(
    server: ServerProcess, content_type: str
) -> None:
    token = token_of(server)
    started = time.monotonic()
    # Over the collection's 3 MiB, as a raw body would be refused.
    received = ask_and_wait(server, head("db", token, content_type, 3 * MIB + 1))
    assert received, "no answer before the body"
    status, envelope = answer(received)
    assert status == 413, envelope
    assert envelope["error"].startswith("filesize reached allowed limit"), envelope
    assert time.monotonic() - started < 5
    received = ask_and_wait(server, head("db", token, content_type, 10_000_000_000))
    assert answer(received)[0] == 413
    assert_uploads(server, token, "db")


def test_every_byte_of_a_form_counts_against_the_limit(server: ServerProcess) -> None:
    token = token_of(server)
    # The file alone fits "tight" (SAMPLE + 300 bytes); another field of 400 bytes does not.
    padded = multipart(SAMPLE, ("note", b"n" * 400))
    assert len(SAMPLE) < TIGHT_LIMIT < len(padded)
    response = chunked_upload(server, token, "tight", padded, MULTIPART)
    assert response.status_code == 413, response.text
    assert response.json()["error"].startswith("filesize reached allowed limit"), response.text
    # The same with Content-Length: refused before the body is read.
    response = upload(server, token, "tight", padded, MULTIPART)
    assert response.status_code == 413, response.text
    # Percent-escapes count as sent: about three bytes per byte of the file.
    escaped = urlencoded(SAMPLE)
    assert len(escaped) > TIGHT_LIMIT
    response = chunked_upload(server, token, "tight", escaped, URLENCODED)
    assert response.status_code == 413, response.text
    # The file alone in a form fits, and the lock was free.
    response = chunked_upload(server, token, "tight", multipart(SAMPLE), MULTIPART)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["version"]["filesize"] == len(SAMPLE)


def test_ordinary_forms_still_upload(server: ServerProcess) -> None:
    token = token_of(server)
    digest = hashlib.sha256(SAMPLE).hexdigest()
    for body, content_type in (
        (multipart(SAMPLE, ("note", b"nightly"), ("other", b"x" * 1000)), MULTIPART),
        (b"note=nightly&" + urlencoded(SAMPLE) + b"&after=1", URLENCODED),
    ):
        for send in (upload, chunked_upload):
            response = send(server, token, "db", body, content_type)
            assert response.status_code == 200, response.text
            version = response.json()["data"]["version"]
            assert (version["filesize"], version["sha256"]) == (len(SAMPLE), digest)


def test_refused_forms_free_the_lock(tmp_path: Path, database_url: str) -> None:
    server = launch(tmp_path / "server", database_url)
    try:
        token = token_of(server)
        refusals = [
            (URLENCODED, b"a" * (MAX_FIELD_NAME + 1), 400),
            (URLENCODED, b"note=" + b"a" * MAX_OTHER_FIELDS, 400),
            (MULTIPART, LARGE_OTHER_PART, 400),
        ]
        for content_type, start, status in refusals:
            received = ask_and_wait(server, head("db", token, content_type, 2 * MIB) + start)
            assert answer(received)[0] == status, received[:300]
            assert_uploads(server, token, "db")
        received = ask_and_wait(server, head("db", token, MULTIPART, 10_000_000_000))
        assert answer(received)[0] == 413, received[:300]
        assert_uploads(server, token, "db")
        padded = multipart(SAMPLE, ("note", b"n" * 400))
        assert chunked_upload(server, token, "tight", padded, MULTIPART).status_code == 413
        assert_uploads(server, token, "tight")
    finally:
        server.stop()
    check_log(server)
