"""Helpers of the reliability suites: uploads over a raw socket (so a test knows exactly how
much of a body went out and can drop a connection midway), logins, unique encrypted bodies
of any size; and the dependencies the tests break on purpose (a private PostgreSQL, a
private SeaweedFS, a small filesystem, a proxy that cuts a database connection), whose
fixtures are in ``conftest.py``."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from storage_fixtures import S3TestEndpoint, SeaweedFSServer

UPLOAD_PATH = "/api/stable/repository/collection/{collection}/version"
SEND_CHUNK = 256 * 1024


@dataclass(frozen=True)
class UploadOutcome:
    """What a client saw of one upload: the status and JSON of the answer (None: no answer)
    and whether every byte of the body was handed to the kernel."""

    status: int | None
    payload: dict[str, Any] | None
    sent_all: bool
    note: str = ""

    @property
    def version(self) -> dict[str, Any]:
        assert self.status == 200, self
        assert self.payload is not None, self
        version: dict[str, Any] = self.payload["data"]["version"]
        return version

    @property
    def error(self) -> str:
        return str((self.payload or {}).get("error", ""))


def _read_response(sock: socket.socket) -> tuple[int, dict[str, Any] | None] | None:
    """Status and JSON body of one HTTP/1.1 response, or None when the connection ends
    before a whole one arrived."""
    buffer = b""
    try:
        while b"\r\n\r\n" not in buffer:
            piece = sock.recv(65536)
            if not piece:
                return None
            buffer += piece
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next(
            (
                int(line.split(":", 1)[1])
                for line in lines[1:]
                if line.lower().startswith("content-length:")
            ),
            None,
        )
        while length is not None and len(rest) < length:
            piece = sock.recv(65536)
            if not piece:
                return None
            rest += piece
    except (OSError, ValueError, IndexError):
        return None
    try:
        payload = json.loads(rest[:length] if length is not None else rest)
    except ValueError:
        payload = None
    return status, payload if isinstance(payload, dict) else None


class RawUpload:
    """One upload over a raw socket, sent in steps: the test knows exactly how much of the
    body went out, and can stop midway (a partial upload) or go on later."""

    def __init__(
        self, base_url: str, token: str, collection: str, data: bytes, timeout: float = 30.0
    ) -> None:
        self.data = data
        self.sent = 0
        self.note = ""
        self._host, port = base_url.removeprefix("http://").rsplit(":", 1)
        self._sock: socket.socket | None = None
        try:
            self._sock = socket.create_connection((self._host, int(port)), timeout=timeout)
        except OSError as exc:
            self.note = f"connect: {exc}"
            return
        head = (
            f"POST {UPLOAD_PATH.format(collection=collection)} HTTP/1.1\r\n"
            f"Host: {self._host}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/octet-stream\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        self._send(head)

    @property
    def connected(self) -> bool:
        return self._sock is not None and not self.note

    def _send(self, piece: bytes | memoryview) -> bool:
        if not self.connected:
            return False
        assert self._sock is not None
        try:
            self._sock.sendall(piece)
        except OSError as exc:
            self.note = f"send: {exc}"
            return False
        return True

    def send(self, upto: int | None = None) -> bool:
        """Send the body up to byte ``upto`` (None: all of it); False when the connection
        failed on the way."""
        limit = len(self.data) if upto is None else min(upto, len(self.data))
        view = memoryview(self.data)
        while self.sent < limit:
            end = min(self.sent + SEND_CHUNK, limit)
            if not self._send(view[self.sent : end]):
                return False
            self.sent = end
        return True

    def finish(self) -> UploadOutcome:
        """Send the rest of the body and read the answer."""
        self.send()
        if self._sock is None:
            return UploadOutcome(None, None, False, self.note)
        answer = _read_response(self._sock)
        self.close()
        sent_all = self.sent == len(self.data)
        if answer is None:
            return UploadOutcome(None, None, sent_all, self.note or "no answer")
        return UploadOutcome(answer[0], answer[1], sent_all, self.note)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


def send_upload(
    base_url: str,
    token: str,
    collection: str,
    data: bytes,
    *,
    stop_after: int | None = None,
    hold: float = 0.0,
    stop: threading.Event | None = None,
    timeout: float = 30.0,
) -> UploadOutcome:
    """Upload ``data`` and read the answer. With ``stop_after`` only that many bytes of the
    body are sent; the connection is then held for ``hold`` seconds (or until ``stop`` is
    set) and dropped: a partial upload, which must never be recorded."""
    upload = RawUpload(base_url, token, collection, data, timeout)
    if stop_after is None:
        return upload.finish()
    try:
        upload.send(stop_after)
        if stop is not None:
            stop.wait(hold)
        else:
            time.sleep(hold)
    finally:
        upload.close()
    return UploadOutcome(None, None, False, upload.note or "partial upload dropped")


def login(base_url: str, username: str = "uploader", password: str = "uploader-pass") -> str:  # noqa: S107
    response = httpx.post(
        base_url + "/api/stable/auth/login",
        json={"username": username, "password": password},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["token"]
    return token


class PgpBodies:
    """Valid encrypted uploads of any size, each unique: a small message made by the real
    gpg, grown by a padding packet (tag 21) of random bytes."""

    def __init__(self, messages: list[bytes]) -> None:
        self._messages = messages

    def make(self, size: int, rng: random.Random) -> bytes:
        message = rng.choice(self._messages)
        padding = max(size - len(message) - 6, 1)
        return message + b"\xd5\xff" + padding.to_bytes(4, "big") + rng.randbytes(padding)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- dependencies the tests break on purpose (their fixtures are in conftest.py) -------------

COMMAND_TIMEOUT_S = 60.0


def postgres_bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: $BR_TEST_PG_BIN, ``pg_config --bindir``, the
    Debian layout (newest major version first), else PATH."""
    candidates: list[str] = []
    if os.environ.get("BR_TEST_PG_BIN"):
        candidates.append(os.environ["BR_TEST_PG_BIN"])
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=10
        )
        if result.returncode == 0:
            candidates.append(result.stdout.strip())
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += debian
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        folder = Path(candidate)
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster in a temporary folder on a free loopback port, owned by this
    test alone: it may be stopped (``-m immediate``, i.e. a crash) and started again."""

    bin_dir: Path
    data_dir: Path
    port: int
    run_as: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self.run_as, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}\nlog: {self.log_tail()}"
            )

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def initdb(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--no-sync",
            "-E", "UTF8", "--locale=C",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c max_connections=50"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path),
            "-o", options, "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: the server processes quit at once, without a checkpoint, as if
        PostgreSQL had crashed (WAL recovery runs at the next start)."""
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30",
            "stop",
        )  # fmt: skip

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()


@dataclass
class PrivateSeaweedFS:
    """A SeaweedFS S3 endpoint of this test alone. ``kill`` takes it away (connections are
    refused), ``restart`` brings it back on the same ports with its data, ``freeze`` and
    ``thaw`` make it hang (connections are accepted by the kernel, nothing answers)."""

    server: SeaweedFSServer

    @property
    def endpoint(self) -> S3TestEndpoint:
        return self.server.endpoint

    def kill(self) -> None:
        self.thaw()
        if self.server.process.poll() is None:
            self.server.process.send_signal(signal.SIGKILL)
        self.server.process.wait(timeout=10)

    def freeze(self) -> None:
        self.server.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.server.process.poll() is None:
            self.server.process.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 60.0) -> float:
        """Start the same command line again; return the seconds until a signed write
        succeeded. A short raft election timeout: the single master otherwise waits ~15 s
        for peers that do not exist before it leads again."""
        self.kill()
        started = time.monotonic()
        args = self.server.process.args
        assert isinstance(args, list), args
        command = [str(a) for a in args]
        with (self.server.directory / "weed-restarted.log").open("ab") as log:
            process = subprocess.Popen(
                [*command, "-master.electionTimeout=1s"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.server.directory,
                start_new_session=True,
            )
        self.server = SeaweedFSServer(
            process, self.server.directory, self.server.ports, self.server.endpoint
        )
        client = self.server.endpoint.client()
        deadline = started + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"weed exited on restart: {self.server.log_tail()}")
            try:
                client.put_object(Bucket=self.server.endpoint.bucket, Key=".ready", Body=b"1")
                client.delete_object(Bucket=self.server.endpoint.bucket, Key=".ready")
                return time.monotonic() - started
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS did not come back within {timeout}s: {last}")

    def ensure_running(self) -> None:
        self.thaw()
        if self.server.process.poll() is not None:
            self.restart()

    def stop(self) -> None:
        self.thaw()
        self.server.stop()


@dataclass
class SmallFilesystem:
    """A filesystem of ``size`` bytes mounted at ``path``, to be filled or made read-only."""

    path: Path
    size: int
    kind: str  # "tmpfs" or "loop"
    filler: Path | None = None

    def fill(self) -> int:
        """Write a file until the filesystem is full; return the bytes it took."""
        self.filler = self.path / ".filler"
        written = 0
        block = b"\0" * 65536
        with self.filler.open("wb", buffering=0) as out:
            for size in (65536, 4096, 512, 1):
                try:
                    while True:
                        written += out.write(block[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        return written

    def free(self) -> None:
        if self.filler is not None:
            self.filler.unlink(missing_ok=True)
            self.filler = None

    def remount(self, mode: str) -> None:
        _run(["mount", "-o", f"remount,{mode}", str(self.path)])

    def available(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize


def _run(command: list[str]) -> None:
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_S
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {(result.stderr or result.stdout).strip()}")


def mount_small_filesystem(path: Path, image: Path, size: int) -> str:
    """Mount a tmpfs of ``size`` bytes at ``path``, else an ext4 image through a loop
    device; return which. Raises RuntimeError with both reasons."""
    try:
        _run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)])
        return "tmpfs"
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as tmpfs_error:
        try:
            with image.open("wb") as out:
                out.truncate(size)
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)])
            _run(["mount", "-o", "loop", str(image), str(path)])
            return "loop"
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as loop_error:
            raise RuntimeError(f"tmpfs: {tmpfs_error}; loop device: {loop_error}") from loop_error


# The simple-query message asyncpg sends to commit a transaction: 'Q', its length, the text.
# (Matching the bare word would also hit "BEGIN ISOLATION LEVEL READ COMMITTED".)
COMMIT_MESSAGE = re.compile(rb"Q\x00\x00\x00\x0cCOMMIT;\x00", re.IGNORECASE)


class CommitCuttingProxy:
    """A TCP proxy in front of PostgreSQL. Once armed with a marker (bytes that only the
    statements of one transaction carry, e.g. a new version's file name), it lets that
    transaction's ``COMMIT`` through to PostgreSQL and then breaks the connection before
    the answer comes back: the transaction is committed, but the client only sees the
    connection die (as when a network link or the database host fails at that instant)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._marker: bytes | None = None
        self.cuts = 0
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, marker: bytes) -> None:
        self._marker = marker

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            cut = threading.Event()
            threading.Thread(
                target=self._pump_up, args=(client, upstream, cut), daemon=True
            ).start()
            threading.Thread(
                target=self._pump_down, args=(upstream, client, cut), daemon=True
            ).start()

    def _pump_up(
        self, client: socket.socket, upstream: socket.socket, cut: threading.Event
    ) -> None:
        marked = False  # this connection carried the marker since its last COMMIT
        try:
            while piece := client.recv(65536):
                marker = self._marker
                if marker is not None and marker in piece:
                    marked = True
                if marked and COMMIT_MESSAGE.search(piece):
                    self._marker = None
                    self.cuts += 1
                    # PostgreSQL's answer (sent once the COMMIT is durable) is the last
                    # thing this connection carries: _pump_down drops it and hangs up.
                    cut.set()
                    upstream.sendall(piece)
                    time.sleep(0.3)
                    break
                upstream.sendall(piece)
        except OSError:
            pass
        finally:
            for end in (client, upstream):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    @staticmethod
    def _pump_down(upstream: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        try:
            while piece := upstream.recv(65536):
                if cut.is_set():
                    return
                client.sendall(piece)
        except OSError:
            pass
        finally:
            # PostgreSQL closed its end (or the cut did): the client must see it.
            for end in (client, upstream):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closing = True
        self._listener.close()
