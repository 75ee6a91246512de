"""Real receivers on loopback for the notification senders' tests: an HTTP server that
records every request and answers as its path says, and the code blocks of
docs/notifications.md (the reference webhook receiver is run, not copied)."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

DOC = Path(__file__).resolve().parents[1] / "docs" / "notifications.md"


@dataclass(frozen=True)
class Captured:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Captured] = []
        self.lock = threading.Lock()

    def url(self, path: str = "/") -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}{path}"

    def taken(self) -> list[Captured]:
        with self.lock:
            return list(self.requests)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()


class _Handler(BaseHTTPRequestHandler):
    """Answers by path: ``/status/<code>?retry=<Retry-After>``, ``/slow/<seconds>``,
    ``/redirect``; a JSON body whose ``topic`` starts with ``status-<code>`` (ntfy posts
    to the root) gets that status; anything else 200 with the JSON ``{}`` (what ntfy's
    client expects)."""

    server: Recorder

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        with self.server.lock:
            self.server.requests.append(
                Captured(self.command, self.path, {k: v for k, v in self.headers.items()}, body)
            )
        status, headers, answer = 200, {"Content-Type": "application/json"}, b"{}"
        topic = re.search(rb'"topic":\s*"status-(\d{3})', body)
        if topic is not None:
            status, headers, answer = int(topic.group(1)), {}, b""
        elif match := re.fullmatch(r"/status/(\d{3})", parts.path):
            status, headers, answer = int(match.group(1)), {}, b""
            retry = parse_qs(parts.query).get("retry")
            if retry:
                headers["Retry-After"] = retry[0]
        elif match := re.fullmatch(r"/slow/([\d.]+)", parts.path):
            time.sleep(float(match.group(1)))
        elif parts.path == "/redirect":
            status, headers = 302, {"Location": "http://elsewhere.invalid/hook"}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_POST = _serve
    do_GET = _serve
    do_PUT = _serve


def make_certificate(folder: Path) -> tuple[Path, Path] | None:
    """A throw-away self-signed certificate for 127.0.0.1 and its key (``openssl``), or
    None when openssl is not installed."""
    if shutil.which("openssl") is None:
        return None
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@contextmanager
def recorder(tls: ssl.SSLContext | None = None) -> Iterator[Recorder]:
    """A :class:`Recorder` on a loopback port, over TLS with ``tls``."""
    server = Recorder()
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def doc_block(marker: str) -> str:
    """The code block right after the HTML comment of docs/notifications.md that contains
    ``marker``."""
    text = DOC.read_text()
    match = re.search(
        r"<!--[^>]*" + re.escape(marker) + r"[^>]*-->\s*```\w*\n(.*?)\n```", text, re.DOTALL
    )
    assert match is not None, f"no code block marked {marker!r} in {DOC.name}"
    return match.group(1)
