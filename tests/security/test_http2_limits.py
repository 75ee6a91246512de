"""Cleartext HTTP/2 on the plain port, spoken by hand over raw sockets against the real
server: off unless ``--http2`` turns it on, and bounded when it is on (header list size,
CONTINUATION frames, a ping that drops a client stuck in the middle of a header block).

Frames are built with struct; header blocks use HPACK's static table and literal fields
without indexing, which is all a request needs."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import ServerProcess, default_documents, start_server, wait_until, write_config

pytestmark = pytest.mark.e2e

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY, CONTINUATION = 0x0, 0x1, 0x4, 0x6, 0x7, 0x9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
FRAME = 16 * 1024  # the largest frame a peer may send before the server says otherwise
FLOOD = 15 * 1024 * 1024  # one header value, never finished
CONNECTIONS = 4
# RSS growth allowed while the connections are open: four connections holding 15 MiB
# header blocks grew it by about 80 MiB before the limits.
RSS_SLACK_KIB = 6 * 1024


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def hpack_int(value: int, prefix: int = 7) -> bytes:
    top = (1 << prefix) - 1
    if value < top:
        return bytes([value])
    out = bytearray([top])
    value -= top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing, with a new name."""
    return b"\x00" + hpack_int(len(name)) + name + hpack_int(len(value)) + value


def request_block(path: bytes, *extra: bytes) -> bytes:
    # Static table: 2 = ":method GET", 6 = ":scheme http"; ":path" by literal.
    return b"\x82\x86" + literal(b":path", path) + literal(b":authority", b"test") + b"".join(extra)


def read_frames(sock: socket.socket, until: float) -> Iterator[tuple[int, int, int, bytes]]:
    """Frames as they arrive, until the connection closes or ``until`` (monotonic) passes."""
    buffer = b""
    while time.monotonic() < until:
        sock.settimeout(max(0.05, until - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return
        except OSError:
            return
        if not chunk:
            return
        buffer += chunk
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            yield kind, flags, stream, buffer[9 : 9 + length]
            buffer = buffer[9 + length :]


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def port_of(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


def open_header_flood(port: int, sent: list[int]) -> socket.socket:
    """Connect, speak HTTP/2 and start a header block that carries a 15 MiB value in
    CONTINUATION frames, never ending it (no END_HEADERS). Sending stops when the server
    closes; the socket stays open for the caller."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    block = request_block(b"/health", literal(b"x-flood", b"a" * FLOOD))
    pieces = [block[i : i + FRAME] for i in range(0, len(block), FRAME)][:-1]
    total = 0
    with contextlib.suppress(OSError):
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0, 1, pieces[0]))
        total += len(pieces[0])
        for piece in pieces[1:]:
            sock.sendall(frame(CONTINUATION, 0, 1, piece))
            total += len(piece)
    sent.append(total)
    return sock


def flood(server: ServerProcess) -> tuple[list[socket.socket], list[int], int]:
    """CONNECTIONS header floods at once; returns their sockets (still open on our side),
    the bytes each got out and the server's RSS growth (KiB) while they are open."""
    pid = server.process.pid
    httpx.get(server.url + "/health")  # warm up before the baseline
    before = vm_rss_kib(pid)
    sockets: list[socket.socket] = []
    sent: list[int] = []
    threads = [
        threading.Thread(target=lambda: sockets.append(open_header_flood(port_of(server), sent)))
        for _ in range(CONNECTIONS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    time.sleep(1.0)
    growth = vm_rss_kib(pid) - before
    return sockets, sent, growth


def closed_by_server(sock: socket.socket, within: float) -> tuple[bool, list[int]]:
    """Whether the server closed the connection within ``within`` seconds, and the frame
    types it sent before (GOAWAY is 7)."""
    deadline = time.monotonic() + within
    kinds = [kind for kind, _, _, _ in read_frames(sock, deadline)]
    return time.monotonic() < deadline, kinds


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    write_config(tmp_path / "config", default_documents())
    return tmp_path


@pytest.fixture
def plain_server(workdir: Path) -> Iterator[ServerProcess]:
    server = start_server(workdir, workdir / "config")
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def http2_server(workdir: Path) -> Iterator[ServerProcess]:
    server = start_server(workdir, workdir / "config", extra_args=["--http2"])
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_http2_is_off_by_default_and_header_floods_hold_no_memory(
    plain_server: ServerProcess,
) -> None:
    sockets, sent, growth = flood(plain_server)
    try:
        assert growth < RSS_SLACK_KIB, f"RSS grew by {growth} KiB; sent {sent}"
        for sock in sockets:
            closed, kinds = closed_by_server(sock, within=5)
            # Not spoken at all: no SETTINGS frame back, the connection is closed.
            assert closed
            assert SETTINGS not in kinds
    finally:
        for sock in sockets:
            sock.close()
    # HTTP/1.1 is served as before.
    response = httpx.get(plain_server.url + "/health")
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"


def test_opt_in_http2_serves_requests(http2_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", port_of(http2_server)), timeout=10) as sock:
        block = request_block(b"/health")
        sock.sendall(
            PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, block)
        )
        status = b""
        body = b""
        for kind, flags, stream, payload in read_frames(sock, time.monotonic() + 10):
            if kind == SETTINGS and not flags & ACK:
                sock.sendall(frame(SETTINGS, ACK, 0))
            elif kind == HEADERS and stream == 1:
                status = payload[:1]
            elif kind == DATA and stream == 1:
                body += payload
                if flags & END_STREAM:
                    break
    assert status == b"\x88"  # ":status 200" from the static table
    assert b'"status":true' in body, body
    # HTTP/1.1 still works on the same port.
    assert httpx.get(http2_server.url + "/health").status_code == 200


def test_opt_in_http2_refuses_header_floods(http2_server: ServerProcess) -> None:
    sockets, sent, growth = flood(http2_server)
    try:
        assert growth < RSS_SLACK_KIB, f"RSS grew by {growth} KiB; sent {sent}"
        # The server stopped reading after a few frames: far from the 15 MiB.
        assert max(sent) < 4 * 1024 * 1024, sent
        for sock in sockets:
            closed, kinds = closed_by_server(sock, within=5)
            assert closed
            assert GOAWAY in kinds
    finally:
        for sock in sockets:
            sock.close()
    assert httpx.get(http2_server.url + "/health").status_code == 200


HELD = 100
HELD_FRAMES = 4  # one HEADERS and three CONTINUATION frames: under the frame count limit
HELD_SLACK_KIB = 160 * HELD  # measured: about 120 KiB per connection


@pytest.mark.slow
def test_opt_in_http2_drops_unfinished_header_blocks_after_the_ping_timeout(
    http2_server: ServerProcess,
) -> None:
    pid = http2_server.process.pid
    port = port_of(http2_server)
    httpx.get(http2_server.url + "/health")
    before = vm_rss_kib(pid)
    block = request_block(b"/health", literal(b"x-slow", b"a" * (HELD_FRAMES * FRAME)))
    sockets = []
    try:
        for _ in range(HELD):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(sock)
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0, 1, block[:FRAME]))
            for index in range(1, HELD_FRAMES):
                piece = block[index * FRAME : (index + 1) * FRAME]
                sock.sendall(frame(CONTINUATION, 0, 1, piece))
        started = time.monotonic()
        time.sleep(1.0)
        growth = vm_rss_kib(pid) - before
        assert growth < HELD_SLACK_KIB, growth
        for sock in sockets:
            # The ping goes unanswered (a header block cannot be interrupted): dropped
            # within the ping interval and timeout (10 s + 20 s).
            closed, kinds = closed_by_server(sock, within=40 - (time.monotonic() - started))
            assert closed
            assert PING in kinds
        assert time.monotonic() - started < 40
    finally:
        for sock in sockets:
            sock.close()
    wait_until(lambda: httpx.get(http2_server.url + "/health").status_code == 200)
