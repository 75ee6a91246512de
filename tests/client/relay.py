"""A relay in front of the real server that can change what passes through it, the way the
world between a client and its server does: a network path that damages one byte of an
upload, a server in the reference's shape (no checksum headers on downloads, no SHA-256 in
the answer to an upload), or a broken proxy that answers an upload before its body ended.
Everything else passes unchanged; the relay also tells how each upload body arrived.

One request per connection (it asks both sides for ``Connection: close``), so a response
can be read whole and rewritten before the client sees it."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import urlsplit

HEAD_LIMIT = 64 * 1024


@dataclass
class UploadSeen:
    """How an upload body arrived from the client."""

    chunked: bool
    complete: bool  # the final zero-length chunk arrived
    size: int  # body bytes received (decoded)


@dataclass
class Relay:
    upstream: tuple[str, int]
    url: str = ""
    flip_last_upload_byte: bool = False  # damage the body's last byte on its way to the server
    drop_response_headers: set[str] = field(default_factory=set)  # lower-case names
    drop_version_fields: set[str] = field(default_factory=set)  # from ``data.version`` answers
    answer_early: bool = False  # answer 200 to an upload after its first chunk, itself
    uploads: list[UploadSeen] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    # -- per connection ----------------------------------------------------------------------

    def handle(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            reader = client.makefile("rb")
            head = _read_head(reader)
            if head is None:
                return
            method = head[0].split(b" ", 1)[0]
            headers = _headers(head)
            chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
            if self.answer_early and method == b"POST" and chunked:
                self._answer_early(reader, client)
                return
            upstream = socket.create_connection(self.upstream, timeout=120)
            upstream.sendall(_join_head(_with_connection_close(head)))
            answer: list[bytes] = []
            receiver = threading.Thread(target=lambda: answer.append(_read_all(upstream)))
            receiver.start()
            with suppress(OSError):  # the server may answer, and close, before the end
                if chunked:
                    self._relay_chunks(reader, upstream)
                else:
                    _copy(reader, upstream, int(headers.get(b"content-length", b"0")))
            receiver.join(120)
            if answer and b"\r\n\r\n" in answer[0]:  # none when the client went away
                client.sendall(self._rewrite(answer[0], head_only=method == b"HEAD"))
        except OSError:
            pass
        finally:
            if upstream is not None:
                upstream.close()
            with suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()

    def _relay_chunks(self, reader: BinaryIO, upstream: socket.socket) -> None:
        """Forward the chunks as they come, one held back so that the last data byte can
        be changed once the final chunk shows which byte is last."""
        held = b""
        size = 0
        complete = False
        try:
            while True:
                line = reader.readline(HEAD_LIMIT)
                if not line.endswith(b"\r\n"):
                    break
                length = int(line.split(b";")[0].strip(), 16)
                if length == 0:
                    while reader.readline(HEAD_LIMIT) not in (b"\r\n", b""):
                        pass  # trailers
                    complete = True
                    break
                data = reader.read(length + 2)[:length]
                size += len(data)
                if len(data) < length:
                    break
                if held:
                    upstream.sendall(_chunk(held))
                held = data
            if complete and self.flip_last_upload_byte and held:
                held = held[:-1] + bytes([held[-1] ^ 0x01])
            if held:
                upstream.sendall(_chunk(held))
            if complete:
                upstream.sendall(b"0\r\n\r\n")
            else:
                upstream.shutdown(socket.SHUT_RDWR)  # the client went away: so does the relay
        finally:
            self.uploads.append(UploadSeen(chunked=True, complete=complete, size=size))

    def _answer_early(self, reader: BinaryIO, client: socket.socket) -> None:
        length = int(reader.readline(HEAD_LIMIT).split(b";")[0].strip(), 16)
        received = len(reader.read(length))
        self.uploads.append(UploadSeen(chunked=True, complete=False, size=received))
        body = json.dumps({"status": True, "data": {"version": {"versionNumber": 1}}}).encode()
        client.sendall(
            _response(b"HTTP/1.1 200 OK", [(b"Content-Type", b"application/json")], body)
        )

    def _rewrite(self, raw: bytes, *, head_only: bool) -> bytes:
        head_end = raw.index(b"\r\n\r\n")
        lines = raw[:head_end].split(b"\r\n")
        headers = [tuple(line.split(b":", 1)) for line in lines[1:]]
        fields = [(name.strip(), value.strip()) for name, value in headers]
        body = raw[head_end + 4 :]
        if head_only:
            kept = [(n, v) for n, v in fields if n.lower() not in self._dropped()]
            return _join_head([lines[0], *(n + b": " + v for n, v in kept)])
        if any(n.lower() == b"transfer-encoding" for n, _ in fields):
            body = _dechunk(body)
        if self.drop_version_fields and body.startswith(b"{"):
            document = json.loads(body)
            version = document.get("data", {}).get("version")
            if isinstance(version, dict):
                for name in self.drop_version_fields:
                    version.pop(name, None)
                body = json.dumps(document).encode()
        kept = [(n, v) for n, v in fields if n.lower() not in self._dropped()]
        return _response(lines[0], kept, body)

    def _dropped(self) -> set[bytes]:
        framing = {b"content-length", b"transfer-encoding", b"connection"}
        return framing | {name.lower().encode() for name in self.drop_response_headers}

    # -- listening ---------------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            thread = threading.Thread(target=self.handle, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()


@contextmanager
def relay_to(url: str) -> Iterator[Relay]:
    """A relay on a loopback port in front of the server at ``url``; its ``url`` is where
    the client goes."""
    parts = urlsplit(url)
    relay = Relay(upstream=(parts.hostname or "127.0.0.1", parts.port or 80))
    listener = socket.create_server(("127.0.0.1", 0))
    relay.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    server = threading.Thread(target=relay.serve, args=(listener,), daemon=True)
    server.start()
    try:
        yield relay
    finally:
        # Closing alone does not wake a thread blocked in accept() on Linux; shutting the
        # listening socket down does.
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        server.join(10)
        for thread in relay._threads:
            thread.join(30)


def _read_head(reader: BinaryIO) -> list[bytes] | None:
    lines: list[bytes] = []
    while True:
        line = reader.readline(HEAD_LIMIT)
        if not line:
            return None
        if line == b"\r\n":
            return lines
        lines.append(line.rstrip(b"\r\n"))


def _headers(head: list[bytes]) -> dict[bytes, bytes]:
    pairs = (line.split(b":", 1) for line in head[1:])
    return {name.strip().lower(): value.strip() for name, value in pairs}


def _with_connection_close(head: list[bytes]) -> list[bytes]:
    kept = [line for line in head[1:] if not line.lower().startswith(b"connection:")]
    return [head[0], *kept, b"Connection: close"]


def _join_head(lines: list[bytes]) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _response(status: bytes, fields: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [status, *(n + b": " + v for n, v in fields)]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return _join_head(lines) + body


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    position = 0
    while True:
        end = body.index(b"\r\n", position)
        length = int(body[position:end].split(b";")[0], 16)
        if length == 0:
            return bytes(out)
        out += body[end + 2 : end + 2 + length]
        position = end + 2 + length + 2


def _copy(reader: BinaryIO, upstream: socket.socket, length: int) -> None:
    while length > 0:
        data = reader.read(min(length, 1 << 16))
        if not data:
            return
        upstream.sendall(data)
        length -= len(data)


def _read_all(sock: socket.socket) -> bytes:
    parts: list[bytes] = []
    with suppress(OSError):
        while data := sock.recv(1 << 16):
            parts.append(data)
    return b"".join(parts)
