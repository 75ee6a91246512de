"""Throughput, latency and memory of the server side by side with restic's rest-server.

Starts the server and restic's rest-server (the reference: like the server it hashes every
upload with SHA-256, writes a temporary file, fsyncs and renames) on loopback, with their
data on tmpfs and again on disk, and measures in interleaved rounds (who goes first
alternates; the median of the rounds counts):

1. a large upload and download (``curl -T``, default 512 MiB);
2. sequential 1 MiB uploads over one keep-alive connection (ours on SQLite, and on
   PostgreSQL when one is reachable);
3. 1 MiB download latency (p50, p99) over one keep-alive connection;
4. 8 uploads of 64 MiB at once to 8 collections (8 repositories of rest-server);
5. on a fresh server: the idle RSS after start-up and one login, and the peak RSS during a
   1 GiB upload.

Prints a table (measure, ours, rest-server, ratio, target, result) with the machine it ran
on. Exits 1 when a target is missed, 2 when the run could not be done (or a download did
not match the upload). Without a rest-server binary it says how to build one and measures
the server alone (no ratios).

    .venv/bin/python bench/throughput.py --rest-server PATH [--media tmpfs,disk] [--rounds 5]
    .venv/bin/python bench/throughput.py --quick      # small sizes, 2 rounds, tmpfs: a check

Only the standard library and the project's own dependencies are used. Everything it
starts or writes is removed on exit, also on Ctrl-C. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import grp
import hashlib
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

MiB = 1024 * 1024
COLLECTION = "bench"  # large uploads (and the memory check)
SMALL_COLLECTION = "small"  # sequential 1 MiB uploads, rotated as in real use
PARALLEL_PREFIX = "par-"  # par-1 ... par-8: the concurrent uploads
USERNAME = "bench-admin"
PASSWORD = "bench-password"  # noqa: S105 - a throw-away account on a loopback server
JWT_SECRET = "bench-jwt-secret-that-is-long-enough-for-hs256"  # noqa: S105
REST_SERVER_ENV = "BR_BENCH_REST_SERVER"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
SMALL_SIZE = MiB  # the "1 MiB" of the small uploads and downloads (plaintext)
SMALL_VERSIONS = 5  # maxBackupsCount of the small collection (fifo): every upload rotates

# Targets. Ratios are ours / rest-server's, medians of the rounds.
LARGE_TARGET = 1.0  # large upload and large download
SMALL_UPLOAD_TARGET = 0.5  # sequential 1 MiB uploads per second, on SQLite
DOWNLOAD_P50_LIMIT = 3.0  # ms, 1 MiB download over a keep-alive connection
PARALLEL_TARGET = 1.0  # aggregate of the concurrent uploads
IDLE_RSS_LIMIT = 80 * MiB  # after start-up and one login
RSS_GROWTH_LIMIT = 8 * MiB  # peak during the large memory-check upload, above idle

BUILD_HINT = """\
restic's rest-server is not given (--rest-server PATH or the variable {env}), so the
server is measured alone and no ratio is computed. To build the reference: restic's
rest-server v0.13.0, `go build -o rest-server ./cmd/rest-server` in its source tree, or
its build script (`bash build.sh OUTPUT`, which takes Go and every dependency from
Debian's packages). Then run this script with --rest-server OUTPUT."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB, "T": 1024 * 1024 * MiB}


class BenchError(Exception):
    """The run cannot go on (a process did not start, a request failed)."""


class Interrupted(BaseException):
    """A signal asked the run to stop (raised from the handler, like KeyboardInterrupt)."""


def stop_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted, so the run cleans up on the way out;
    output is line-buffered so a log shows progress as it happens."""

    def on_signal(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M, 1G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parse_sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def human(size: float) -> str:
    for unit, factor in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size:.0f} B"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=5)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- test files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class TestFile:
    path: Path
    plain_size: int
    size: int
    sha256: str


class TestFiles:
    """OpenPGP messages (symmetric, no compression, random plaintext) made once per size."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.home = folder / "gnupg"
        self.home.mkdir(parents=True, mode=0o700)
        self._made: dict[int, TestFile] = {}
        self._agent_started = False

    def close(self) -> None:
        """Stop the gpg-agent that gpg started for this home directory."""
        if self._agent_started:
            subprocess.run(
                ["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                capture_output=True,
                check=False,
            )

    def get(self, size: int) -> TestFile:
        if size not in self._made:
            self._made[size] = self._make(size)
        return self._made[size]

    def _make(self, size: int) -> TestFile:
        target = self.folder / f"random-{size}.gpg"
        started = time.monotonic()
        print(f"  generating a {human(size)} OpenPGP file with gpg ...", end="", flush=True)
        self._agent_started = True  # gpg starts a gpg-agent for this home directory
        with open("/dev/urandom", "rb") as urandom:
            head = subprocess.Popen(
                ["head", "-c", str(size)], stdin=urandom, stdout=subprocess.PIPE
            )
            gpg = subprocess.run(
                [
                    "gpg",
                    "--homedir",
                    str(self.home),
                    "--batch",
                    "--yes",
                    "--quiet",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "x",
                    "--compress-algo",
                    "none",
                    "-o",
                    str(target),
                    "-c",
                ],
                stdin=head.stdout,
                capture_output=True,
                check=False,
            )
            assert head.stdout is not None
            head.stdout.close()
            head.wait()
        if gpg.returncode != 0 or head.returncode != 0:
            raise BenchError(f"gpg failed: {gpg.stderr.decode(errors='replace')}")
        made = TestFile(target, size, target.stat().st_size, sha256_file(target))
        print(f" {made.size} bytes in {time.monotonic() - started:.1f} s")
        return made


# --------------------------------------------------------------------------- fairness


def settle() -> None:
    """Called before every timed upload: write back all dirty pages, so that neither server
    competes with the writeback of the previous transfer for the two cores."""
    os.sync()


def drop_copy(path: Path) -> None:
    """Delete a copy a round left behind, outside the timed requests.

    Keeping the page cache from growing round after round keeps the uploads comparable:
    on this kind of virtual machine (virtio-balloon with free page reporting) memory that
    the page cache takes for the first time, or takes back after the host reclaimed it, is
    much slower to fill (measured: nginx wrote a new 512 MiB file at ~2.7 GiB/s when the
    previous copy had just been deleted, at 0.9-1.8 GiB/s when copies accumulated).
    """
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# --------------------------------------------------------------------------- curl


@dataclass
class Transfer:
    seconds: float
    speed: float  # bytes per second, as curl reports it
    status: int
    body: bytes = b""


CURL_FORMAT = "%{http_code} %{time_total} %{speed_upload} %{speed_download}"


def curl(args: Sequence[str], *, upload: bool, response: Path | None = None) -> Transfer:
    """Run curl once. ``Expect:`` is cleared so neither server is charged curl's wait for a
    ``100 Continue`` (see the README)."""
    out = str(response) if response else os.devnull
    command = ["curl", "-sS", "-H", "Expect:", "-o", out, "-w", CURL_FORMAT, *args]
    result = subprocess.run(command, capture_output=True, check=False, timeout=3600)
    if result.returncode != 0:
        raise BenchError(f"curl failed ({result.returncode}): {result.stderr.decode().strip()}")
    code, total, up, down = result.stdout.decode().split()
    body = response.read_bytes() if response and response.exists() else b""
    return Transfer(float(total), float(up if upload else down), int(code), body)


def curl_sha256(args: Sequence[str]) -> tuple[str, int]:
    """Download with curl and hash the bytes as they arrive (correctness check, untimed)."""
    command = ["curl", "-sS", "--fail", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    digest = hashlib.sha256()
    size = 0
    assert process.stdout is not None
    try:
        while block := process.stdout.read(4 * MiB):
            digest.update(block)
            size += len(block)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise BenchError(f"download failed: {err.decode(errors='replace').strip()}")
    return digest.hexdigest(), size


# --------------------------------------------------------------------------- memory


def read_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of one process, in bytes."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def descendants(pid: int) -> list[int]:
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    found.extend(int(child) for child in children.read().split())
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(value) for value in fields[11:13])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``/proc/PID/clear_refs``, value 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Polls the resident memory of a process tree in a thread while a transfer runs."""

    def __init__(self, pid: int, interval: float = 0.025) -> None:
        self.pid = pid
        self.interval = interval
        self.before = 0
        self.peak = 0
        self.hwm = 0
        self.samples = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree_rss(self) -> int:
        return sum(read_status(pid).get("VmRSS", 0) for pid in descendants(self.pid))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.hwm_reset = reset_peak_rss(self.pid)
        self.before = self._tree_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._tree_rss())
        self.hwm = read_status(self.pid).get("VmHWM", 0)


# --------------------------------------------------------------------------- nginx

NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/octet-stream gpg; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/webdav;
        client_max_body_size 0;
        client_body_buffer_size 1m;
        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.version = ""

    def start(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            raise BenchError("nginx is not installed (Debian: apt-get install nginx-light)")
        info = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False)
        self.version = info.stderr.splitlines()[0].split(":", 1)[-1].strip()
        if "--with-http_dav_module" not in info.stderr:
            raise BenchError(f"{binary} was built without the WebDAV module")
        (self.prefix / "webdav").mkdir(parents=True)
        user = ""
        if os.geteuid() == 0:  # workers would otherwise drop to "nobody"
            user = f"user {getpass.getuser()} {grp.getgrgid(os.getegid()).gr_name};"
        conf = self.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, prefix=self.prefix, port=self.port))
        log = self.prefix / "stderr.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    binary,
                    "-p",
                    str(self.prefix),
                    "-e",
                    str(self.prefix / "error.log"),
                    "-c",
                    str(conf),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_http(self.url + "/", self.process, self.prefix / "error.log", accept=(200, 403, 404))

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM)


def wait_http(
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    accept: Sequence[int] = (200,),
    timeout: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{url} exited with {process.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback
                if answer.status in accept:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in accept:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise BenchError(f"{url} did not answer within {timeout:.0f} s:\n{tail(log)}")


# --------------------------------------------------------------------------- our server


NO_RATE_LIMITS = (
    "--rate-default-limit=0",
    "--rate-auth-limit=0",
    "--rate-collection-health-limit=0",
    "--rate-server-health-limit=0",
)


def launch_server(
    workdir: Path,
    port: int,
    documents: list[dict[str, Any]],
    storage: Path,
    log: Path,
    extra_args: Sequence[str] = (),
    db_url: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m backup_repository`` on a loopback port with SQLite (or
    ``db_url``), file:// storage and ``documents`` as its configuration, and wait until
    /health answers."""
    config = workdir / "config"
    config.mkdir(parents=True)
    (config / "objects.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
    command = [
        sys.executable,
        "-m",
        "backup_repository",
        f"--listen=127.0.0.1:{port}",
        "--db-url",
        db_url or f"sqlite:///{workdir / 'db.sqlite'}",
        "--jwt-secret-key",
        JWT_SECRET,
        "--config-local-path",
        str(config),
        "--storage-url",
        storage.as_uri(),
        "--log-level=warning",
        *extra_args,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BR_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process, log)
    except BaseException:  # a failed start or Ctrl-C: leave no server behind
        stop_process(process, signal.SIGTERM)
        raise
    return process


class Server:
    """Our server with an admin user and the bench's collections: ``bench`` (room for
    ``versions`` large uploads), ``small`` (fifo, 5 versions: every further upload rotates
    one out) and ``par-1`` ... ``par-N`` (the concurrent uploads)."""

    def __init__(
        self,
        workdir: Path,
        password_hash: str,
        versions: int = 3,
        *,
        db_url: str | None = None,
        version_size: int = 2 * 1024 * MiB,
        parallel: int = 8,
    ) -> None:
        self.workdir = workdir
        self.versions = max(3, versions)
        self.db_url = db_url
        self.version_size = version_size
        self.parallel = parallel
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.log = workdir / "server.log"
        self.password_hash = password_hash

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True)
        self.process = launch_server(
            self.workdir,
            self.port,
            self.documents(),
            storage,
            self.log,
            NO_RATE_LIMITS,
            db_url=self.db_url,
        )
        self.token = self.login()

    def documents(self) -> list[dict[str, Any]]:
        def collection(name: str, count: int, one: int, description: str) -> dict[str, Any]:
            return {
                "apiVersion": "backups.riotkit.org/v1alpha1",
                "kind": "BackupCollection",
                "metadata": {"name": name},
                "spec": {
                    "description": description,
                    "filenameTemplate": f"{name}-${{version}}.gpg",
                    "maxBackupsCount": count,
                    "maxOneVersionSize": str(one),
                    "maxCollectionSize": str(2 * one * count),
                    "strategyName": "fifo",
                    "strategySpec": {},
                    "accessControl": [],
                },
            }

        large = max(2 * 1024 * MiB, self.version_size)
        return [
            {
                "apiVersion": "backups.riotkit.org/v1alpha1",
                "kind": "BackupUser",
                "metadata": {"name": USERNAME},
                "spec": {
                    "email": f"{USERNAME}@example.org",
                    "deactivated": False,
                    "password": self.password_hash,
                    "roles": ["systemAdmin"],
                },
            },
            collection(COLLECTION, self.versions, large, "throughput benchmark"),
            collection(SMALL_COLLECTION, SMALL_VERSIONS, 4 * MiB, "sequential small uploads"),
            *(
                collection(f"{PARALLEL_PREFIX}{n}", self.versions, large, "concurrent uploads")
                for n in range(1, self.parallel + 1)
            ),
        ]

    def login(self) -> str:
        request = urllib.request.Request(  # noqa: S310 - loopback
            self.url + "/api/stable/auth/login",
            data=json.dumps({"username": USERNAME, "password": PASSWORD}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
                return str(json.load(answer)["data"]["token"])
        except urllib.error.HTTPError as exc:
            raise BenchError(
                f"login failed: {exc.code} {exc.read()[:500]!r}\n{tail(self.log)}"
            ) from None

    @property
    def auth(self) -> list[str]:
        return ["-H", f"Authorization: Bearer {self.token}"]

    @property
    def upload_url(self) -> str:
        return self.versions_url(COLLECTION)

    def versions_url(self, collection: str) -> str:
        return f"{self.url}/api/stable/repository/collection/{collection}/version"

    def stored(self, version: int, collection: str = COLLECTION) -> list[Path]:
        """The file:// storage's file(s) of a version (the bench's templates name them)."""
        return list((self.workdir / "storage").rglob(f"{collection}-{version}.gpg"))

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM)


@dataclass
class Upload:
    transfer: Transfer
    version: int
    sha256: str
    rss_before: int
    rss_peak: int
    hwm: int
    hwm_reset: bool
    samples: int
    cpu: float


# --------------------------------------------------------------------------- rest-server


class RestServer:
    """restic's rest-server, the reference: ``--no-auth`` and nothing else, so it verifies
    the SHA-256 of every upload and fsyncs the file and its folder, as the server does."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.data = workdir / "data"
        self.log = workdir / "rest-server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, repos: Sequence[str]) -> None:
        self.data.mkdir(parents=True)
        command = [
            str(self.binary),
            "--no-auth",
            "--path",
            str(self.data),
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_http(self.url + "/", self.process, self.log, accept=(200, 400, 401, 404, 405))
        except BenchError as exc:
            raise BenchError(f"rest-server did not start: {exc}") from None
        for repo in repos:
            status, body = plain_request("POST", f"{self.url}/{repo}/?create=true")
            if status != 200:
                raise BenchError(f"rest-server did not create {repo}: {status} {body[:200]!r}")

    def blob_path(self, repo: str, sha256: str) -> str:
        return f"/{repo}/data/{sha256}"

    def blob_url(self, repo: str, sha256: str) -> str:
        return self.url + self.blob_path(repo, sha256)

    def delete(self, repo: str, sha256: str) -> None:
        """Remove a blob (untimed, between rounds)."""
        status, body = plain_request("DELETE", self.blob_url(repo, sha256))
        if status not in (200, 404):
            raise BenchError(f"rest-server DELETE answered {status}: {body[:200]!r}")

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM)


def rest_server_version(binary: Path) -> str:
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, check=False, timeout=10
        )
    except OSError as exc:
        raise BenchError(f"cannot run rest-server {binary}: {exc}") from None
    text = (result.stdout or result.stderr).strip()
    if result.returncode != 0 or not text:
        raise BenchError(f"{binary} --version failed: {result.stderr.strip()}")
    return text.splitlines()[0]


def plain_request(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One untimed request on a connection of its own (set-up and clean-up)."""
    request = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --------------------------------------------------------------------------- PostgreSQL


class Postgres:
    """A fresh database for one server on a PostgreSQL the bench may create databases on,
    dropped again at the end."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy.engine import make_url

        self.admin = make_url(admin_url).set(drivername="postgresql")
        self.created: list[str] = []

    def _dsn(self, database: str | None = None) -> str:
        url = self.admin if database is None else self.admin.set(database=database)
        return url.render_as_string(hide_password=False)

    def _execute(self, statement: str) -> None:
        import asyncpg  # type: ignore[import-untyped]

        async def run() -> None:
            connection = await asyncpg.connect(self._dsn(), timeout=5)
            try:
                await connection.execute(statement)
            finally:
                await connection.close()

        asyncio.run(run())

    def reachable(self) -> str:
        """An empty string when usable, else why not."""
        try:
            self._execute("SELECT 1")
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return ""

    def create(self) -> str:
        name = f"br_bench_{uuid.uuid4().hex[:12]}"
        self._execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self._dsn(name)

    def drop_all(self) -> None:
        for name in self.created:
            with contextlib.suppress(Exception):
                self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()

    @property
    def safe(self) -> str:
        return self.admin.render_as_string(hide_password=True)


# --------------------------------------------------------------------------- keep-alive


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` 0.5 is the median of an odd count)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


class KeepAlive:
    """One HTTP/1.1 connection reused for every request (``http.client`` sets
    TCP_NODELAY and sends a bytes body with its headers). Counts reconnections: a server
    that closed the connection would otherwise be charged a new handshake silently."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        assert parsed.hostname is not None
        assert parsed.port is not None
        self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=300)
        self.headers = headers or {}
        self.reconnects = -1  # the first connection is not a reconnection
        self._socket: object = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, float]:
        """Status, body and seconds from sending the request to the last byte read."""
        merged = {**self.headers, **headers} if headers else self.headers
        started = time.perf_counter()
        self.connection.request(method, path, body=body, headers=merged)
        answer = self.connection.getresponse()
        data = answer.read()
        seconds = time.perf_counter() - started
        if self.connection.sock is not self._socket:
            self._socket = self.connection.sock
            if self._socket is not None:
                self.reconnects += 1
        return answer.status, data, seconds

    def close(self) -> None:
        self.connection.close()


@dataclass
class Sequential:
    """One round of sequential requests: per-request seconds and the server's CPU."""

    seconds: list[float]
    cpu: float
    last: int = 0  # the last version number (ours)

    @property
    def rate(self) -> float:
        return len(self.seconds) / sum(self.seconds)

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / len(self.seconds)


def small_uploads_ours(server: Server, body: bytes, count: int) -> Sequential:
    path = urllib.parse.urlsplit(server.versions_url(SMALL_COLLECTION)).path
    client = KeepAlive(server.url, {"Authorization": f"Bearer {server.token}"})
    headers = {"Content-Type": "application/octet-stream"}
    seconds: list[float] = []
    last = b""
    try:
        client.request("GET", "/api/stable/auth/whoami")  # connect outside the timing
        cpu_before = cpu_seconds(server.pid)
        for _ in range(count):
            status, last, took = client.request("POST", path, body, headers)
            if status != 200:
                raise BenchError(f"1 MiB upload answered {status}: {last[:300]!r}")
            seconds.append(took)
        cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        client.close()
    if client.reconnects:
        raise BenchError(f"the server closed the keep-alive connection {client.reconnects}x")
    version = int(json.loads(last)["data"]["version"]["versionNumber"])
    return Sequential(seconds, cpu, version)


def small_blob(base: bytes, base_hash: Any, tag: bytes) -> tuple[str, bytes]:
    """A distinct body of ``len(base)`` bytes for rest-server (its blob name is the
    SHA-256 of the body): ``base`` with its last ``len(tag)`` bytes replaced by ``tag``.
    ``base_hash`` is the SHA-256 state of ``base[: -len(tag)]``, so a name costs a hash of
    a few bytes."""
    digest = base_hash.copy()
    digest.update(tag)
    return digest.hexdigest(), base[: len(base) - len(tag)] + tag


class BlobMaker:
    """Distinct same-size bodies and their names for rest-server, made outside timing."""

    TAG = 16

    def __init__(self, base: bytes) -> None:
        self.base = base
        self.prefix_hash = hashlib.sha256(base[: len(base) - self.TAG])
        self.salt = os.urandom(8)
        self.counter = 0

    def next(self) -> tuple[str, bytes]:
        self.counter += 1
        return small_blob(
            self.base, self.prefix_hash, self.salt + self.counter.to_bytes(self.TAG - 8, "big")
        )


def small_uploads_rest(rest: RestServer, blobs: BlobMaker, count: int, delete: bool) -> Sequential:
    """POST ``count`` distinct 1 MiB blobs; with ``delete`` each is deleted right after
    (timed together, which keeps the repository small); without, they are deleted afterwards
    (untimed)."""
    client = KeepAlive(rest.url)
    seconds: list[float] = []
    leftovers: list[str] = []
    try:
        client.request("GET", "/")  # connect outside the timing
        cpu_before = cpu_seconds(rest.pid)
        for _ in range(count):
            name, body = blobs.next()
            path = rest.blob_path(SMALL_COLLECTION, name)
            status, answer, took = client.request("POST", path, body)
            if status != 200:
                raise BenchError(f"rest-server POST answered {status}: {answer[:200]!r}")
            if delete:
                status, answer, took_delete = client.request("DELETE", path)
                if status != 200:
                    raise BenchError(f"rest-server DELETE answered {status}: {answer[:200]!r}")
                took += took_delete
            else:
                leftovers.append(name)
            seconds.append(took)
        cpu = cpu_seconds(rest.pid) - cpu_before
        for name in leftovers:
            status, answer, _ = client.request("DELETE", rest.blob_path(SMALL_COLLECTION, name))
            if status != 200:
                raise BenchError(f"rest-server DELETE answered {status}: {answer[:200]!r}")
    finally:
        client.close()
    if client.reconnects:
        raise BenchError(f"rest-server closed the keep-alive connection {client.reconnects}x")
    return Sequential(seconds, cpu)


def downloads(
    pid: int, url: str, path: str, size: int, count: int, headers: dict[str, str] | None = None
) -> Sequential:
    """GET ``path`` ``count`` times over one connection; every body must be ``size``
    bytes."""
    client = KeepAlive(url, headers)
    seconds: list[float] = []
    try:
        client.request("GET", path)  # connect (and warm) outside the timing
        cpu_before = cpu_seconds(pid)
        for _ in range(count):
            status, body, took = client.request("GET", path)
            if status != 200 or len(body) != size:
                raise BenchError(f"GET {path} answered {status} with {len(body)} bytes")
            seconds.append(took)
        cpu = cpu_seconds(pid) - cpu_before
    finally:
        client.close()
    if client.reconnects:
        raise BenchError(f"GET {path}: the connection was closed {client.reconnects}x")
    return Sequential(seconds, cpu)


# --------------------------------------------------------------------------- large transfers


def upload_ours(
    server: Server, test: TestFile, scratch: Path, collection: str = COLLECTION
) -> Upload:
    response = scratch / f"upload-response-{collection}.json"
    cpu_before = cpu_seconds(server.pid)
    with RssSampler(server.pid) as sampler:
        transfer = curl(
            [
                "-X",
                "POST",
                "-T",
                str(test.path),
                "-H",
                "Content-Type: application/octet-stream",
                *server.auth,
                server.versions_url(collection),
            ],
            upload=True,
            response=response,
        )
    cpu = cpu_seconds(server.pid) - cpu_before
    if transfer.status != 200:
        raise BenchError(
            f"upload to the server answered {transfer.status}: {transfer.body[:500]!r}\n"
            f"{tail(server.log)}"
        )
    version = json.loads(transfer.body)["data"]["version"]
    return Upload(
        transfer,
        int(version["versionNumber"]),
        str(version["sha256"]),
        sampler.before,
        sampler.peak,
        sampler.hwm,
        sampler.hwm_reset,
        sampler.samples,
        cpu,
    )


def download_ours(server: Server, version: int) -> tuple[Transfer, float]:
    url = f"{server.upload_url}/{version}"
    cpu_before = cpu_seconds(server.pid)
    transfer = curl([*server.auth, url], upload=False)
    cpu = cpu_seconds(server.pid) - cpu_before
    if transfer.status != 200:
        raise BenchError(f"download from the server answered {transfer.status}")
    return transfer, cpu


@dataclass
class RestUpload:
    transfer: Transfer
    rss_before: int
    rss_peak: int
    hwm: int
    hwm_reset: bool
    cpu: float


def upload_rest(rest: RestServer, test: TestFile, repo: str = COLLECTION) -> RestUpload:
    cpu_before = cpu_seconds(rest.pid)
    with RssSampler(rest.pid) as sampler:
        transfer = curl(
            ["-X", "POST", "-T", str(test.path), rest.blob_url(repo, test.sha256)], upload=True
        )
    cpu = cpu_seconds(rest.pid) - cpu_before
    if transfer.status != 200:
        raise BenchError(f"upload to rest-server answered {transfer.status}\n{tail(rest.log)}")
    return RestUpload(transfer, sampler.before, sampler.peak, sampler.hwm, sampler.hwm_reset, cpu)


def download_rest(rest: RestServer, test: TestFile) -> tuple[Transfer, float]:
    cpu_before = cpu_seconds(rest.pid)
    transfer = curl([rest.blob_url(COLLECTION, test.sha256)], upload=False)
    cpu = cpu_seconds(rest.pid) - cpu_before
    if transfer.status != 200:
        raise BenchError(f"download from rest-server answered {transfer.status}")
    return transfer, cpu


def upload_nginx(nginx: Nginx, test: TestFile, name: str) -> Transfer:
    transfer = curl(["-T", str(test.path), f"{nginx.url}/{name}"], upload=True)
    if transfer.status not in (201, 204):
        raise BenchError(
            f"PUT to nginx answered {transfer.status}:\n{tail(nginx.prefix / 'error.log')}"
        )
    return transfer


def download_nginx(nginx: Nginx, name: str) -> Transfer:
    transfer = curl([f"{nginx.url}/{name}"], upload=False)
    if transfer.status != 200:
        raise BenchError(f"GET from nginx answered {transfer.status}")
    return transfer


@dataclass
class Parallel:
    bytes_per_second: float
    seconds: float
    rss_peak: int
    bodies: list[bytes]
    cpu: float  # the server's CPU seconds over all the uploads


def parallel_curls(pid: int, commands: Sequence[Sequence[str]], size: int) -> Parallel:
    """Start one curl per command at once; the aggregate is all bytes over the time from
    starting the first to the end of the last."""
    processes: list[subprocess.Popen[bytes]] = []
    cpu_before = cpu_seconds(pid)
    with RssSampler(pid) as sampler:
        started = time.monotonic()
        try:
            for command in commands:
                processes.append(
                    subprocess.Popen(
                        ["curl", "-sS", "-H", "Expect:", "-w", "\n%{http_code}", *command],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                )
            outputs = [process.communicate(timeout=3600) for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        seconds = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_before
    bodies: list[bytes] = []
    for process, (out, err) in zip(processes, outputs, strict=True):
        body, _, code = out.rpartition(b"\n")
        if process.returncode != 0 or code.strip() != b"200":
            raise BenchError(
                f"a concurrent upload failed ({process.returncode}, {code!r}): "
                f"{err.decode(errors='replace').strip()} {body[:300]!r}"
            )
        bodies.append(body)
    return Parallel(len(commands) * size / seconds, seconds, sampler.peak, bodies, cpu)


def parallel_ours(server: Server, test: TestFile, count: int) -> Parallel:
    commands = [
        [
            "-X",
            "POST",
            "-T",
            str(test.path),
            "-H",
            "Content-Type: application/octet-stream",
            *server.auth,
            server.versions_url(f"{PARALLEL_PREFIX}{n}"),
        ]
        for n in range(1, count + 1)
    ]
    return parallel_curls(server.pid, commands, test.size)


def parallel_rest(rest: RestServer, test: TestFile, count: int) -> Parallel:
    commands = [
        ["-X", "POST", "-T", str(test.path), rest.blob_url(f"{PARALLEL_PREFIX}{n}", test.sha256)]
        for n in range(1, count + 1)
    ]
    return parallel_curls(rest.pid, commands, test.size)


# --------------------------------------------------------------------------- results

# The sides measured; "ours" is the server on SQLite.
OURS, OURS_PG, REST, REST_DELETE, NGINX = "ours", "ours-postgres", "rest", "rest+delete", "nginx"


@dataclass
class MediumResults:
    name: str
    path: str
    fstype: str
    # measure -> side -> one value per round
    figures: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # side -> idle, before, peak, hwm (bytes) of the memory check
    rss: dict[str, dict[str, int]] = field(default_factory=dict)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, measure: str, side: str, value: float) -> None:
        self.figures.setdefault(measure, {}).setdefault(side, []).append(value)

    def median(self, measure: str, side: str) -> float | None:
        values = self.figures.get(measure, {}).get(side)
        return statistics.median(values) if values else None


@dataclass
class Row:
    medium: str
    measure: str
    ours: str
    reference: str
    ratio: str
    target: str
    met: bool | None  # None: reported only (no target, or no reference to compare with)


@dataclass
class Run:
    machine: str = ""
    load: str = ""
    rest_server: str = ""
    postgres: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    media: list[MediumResults] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _mibs(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.1f} MiB/s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _ratio_row(
    medium: MediumResults,
    measure: str,
    ours: float | None,
    reference: float | None,
    shown: Callable[[float | None], str],
    target: float | None,
) -> Row:
    ratio = ours / reference if ours is not None and reference else None
    met = None if ratio is None or target is None else ratio >= target
    return Row(
        medium.name,
        measure,
        shown(ours),
        shown(reference),
        "-" if ratio is None else f"{ratio:.2f}",
        "report" if target is None else f">= {target:.1f}x",
        met,
    )


def rows_of(medium: MediumResults, options: dict[str, Any]) -> list[Row]:
    """The table of one medium: each measure against its target."""
    rows: list[Row] = []
    large = human(options.get("size", 0))
    for direction in ("upload", "download"):
        measure = f"large {direction}"
        if measure in medium.figures:
            rows.append(
                _ratio_row(
                    medium,
                    f"{measure} ({large}, curl)",
                    medium.median(measure, OURS),
                    medium.median(measure, REST),
                    _mibs,
                    LARGE_TARGET,
                )
            )
            if medium.median(measure, NGINX) is not None:
                rows.append(
                    _ratio_row(
                        medium,
                        f"{measure}, nginx as reference",
                        medium.median(measure, OURS),
                        medium.median(measure, NGINX),
                        _mibs,
                        None,
                    )
                )
    if "large upload cpu" in medium.figures:
        rows.append(
            Row(
                medium.name,
                "  server CPU, large upload | download",
                f"{_seconds(medium.median('large upload cpu', OURS))} | "
                f"{_seconds(medium.median('large download cpu', OURS))}",
                f"{_seconds(medium.median('large upload cpu', REST))} | "
                f"{_seconds(medium.median('large download cpu', REST))}",
                "",
                "report",
                None,
            )
        )
    if "small rate" in medium.figures:
        rest_post = medium.median("small rate", REST)
        rest_delete = medium.median("small rate", REST_DELETE)
        candidates = [value for value in (rest_post, rest_delete) if value is not None]
        fastest = max(candidates) if candidates else None
        rows.append(
            _ratio_row(
                medium,
                "1 MiB uploads/s, sequential, SQLite",
                medium.median("small rate", OURS),
                fastest,
                _rate,
                SMALL_UPLOAD_TARGET,
            )
        )
        if medium.median("small rate", OURS_PG) is not None:
            rows.append(
                _ratio_row(
                    medium,
                    "1 MiB uploads/s, sequential, PostgreSQL",
                    medium.median("small rate", OURS_PG),
                    fastest,
                    _rate,
                    None,
                )
            )
        if candidates:
            rows.append(
                Row(
                    medium.name,
                    "  rest-server: POST only | POST+DELETE",
                    "",
                    f"{_rate(rest_post)} | {_rate(rest_delete)}",
                    "",
                    "report",
                    None,
                )
            )
        for side, label in ((OURS, "SQLite"), (OURS_PG, "PostgreSQL")):
            if medium.median("small p50", side) is not None:
                rows.append(
                    Row(
                        medium.name,
                        f"  1 MiB upload p50 | CPU per upload, {label}",
                        f"{_ms(medium.median('small p50', side))} | "
                        f"{_ms(medium.median('small cpu', side))}",
                        f"{_ms(medium.median('small p50', REST))} | "
                        f"{_ms(medium.median('small cpu', REST))}",
                        "",
                        "report",
                        None,
                    )
                )
    if "download p50" in medium.figures:
        p50 = medium.median("download p50", OURS)
        rows.append(
            Row(
                medium.name,
                "1 MiB download p50, keep-alive",
                _ms(p50),
                _ms(medium.median("download p50", REST)),
                "",
                f"<= {DOWNLOAD_P50_LIMIT:g} ms",
                None if p50 is None else p50 <= DOWNLOAD_P50_LIMIT,
            )
        )
        rows.append(
            Row(
                medium.name,
                "1 MiB download p99 | CPU per download",
                f"{_ms(medium.median('download p99', OURS))} | "
                f"{_ms(medium.median('download cpu', OURS))}",
                f"{_ms(medium.median('download p99', REST))} | "
                f"{_ms(medium.median('download cpu', REST))}",
                "",
                "report",
                None,
            )
        )
        if medium.median("download p50", OURS_PG) is not None:
            rows.append(
                Row(
                    medium.name,
                    "1 MiB download p50 | p99, PostgreSQL",
                    f"{_ms(medium.median('download p50', OURS_PG))} | "
                    f"{_ms(medium.median('download p99', OURS_PG))}",
                    "",
                    "",
                    "report",
                    None,
                )
            )
    if "parallel" in medium.figures:
        count = options.get("parallel", 8)
        rows.append(
            _ratio_row(
                medium,
                f"{count} x {human(options.get('parallel_size', 0))} uploads at once",
                medium.median("parallel", OURS),
                medium.median("parallel", REST),
                _mibs,
                PARALLEL_TARGET,
            )
        )
    if "parallel cpu" in medium.figures:
        rows.append(
            Row(
                medium.name,
                "  server CPU, all concurrent uploads",
                _seconds(medium.median("parallel cpu", OURS)),
                _seconds(medium.median("parallel cpu", REST)),
                "",
                "report",
                None,
            )
        )
    ours_rss = medium.rss.get(OURS)
    if ours_rss:
        rest_rss = medium.rss.get(REST, {})
        idle = ours_rss["idle"]
        rows.append(
            Row(
                medium.name,
                "idle RSS after start-up and a login",
                human(idle),
                human(rest_rss["idle"]) if rest_rss else "-",
                "",
                f"<= {human(IDLE_RSS_LIMIT)}",
                idle <= IDLE_RSS_LIMIT,
            )
        )
        growth = rss_growth(ours_rss)
        rows.append(
            Row(
                medium.name,
                f"peak RSS above idle, {human(options.get('rss_size', 0))} upload",
                signed(growth),
                signed(rss_growth(rest_rss)) if rest_rss else "-",
                "",
                f"<= +{human(RSS_GROWTH_LIMIT)}",
                growth <= RSS_GROWTH_LIMIT,
            )
        )
    return rows


def rss_growth(rss: dict[str, int]) -> int:
    """Peak above the RSS just before the upload: the sampled peak, or VmHWM when it
    could be reset before the upload (it then catches spikes between samples)."""
    peak = max(rss["peak"], rss["hwm"] if rss.get("hwm_reset") else 0)
    return peak - rss["before"]


def signed(size: int) -> str:
    return f"+{human(size)}" if size >= 0 else f"-{human(-size)}"


def all_rows(run: Run) -> list[Row]:
    return [row for medium in run.media for row in rows_of(medium, run.options)]


def verdict(run: Run) -> int:
    """0: every target met; 1: one missed; 2: the run failed or a check is wrong."""
    broken = bool(run.errors) or any(
        not passed for medium in run.media for _, passed, _ in medium.checks
    )
    if broken or not run.media:
        return 2
    return 1 if any(row.met is False for row in all_rows(run)) else 0


def report(run: Run) -> int:
    print()
    print(run.machine)
    print(f"load before the run: {run.load}")
    print(f"reference: {run.rest_server or 'none (no ratios)'}; PostgreSQL: {run.postgres}")
    print(
        f"medians of {run.options.get('rounds')} interleaved rounds; "
        f"{run.options.get('small_count')} sequential uploads and "
        f"{run.options.get('download_count')} downloads per round"
    )
    widths = (7, 48, 26, 26, 6, 13)
    head = ("medium", "measure", "ours", "rest-server", "ratio", "target")
    print()
    print("  ".join(f"{h:<{w}}" for h, w in zip(head, widths, strict=True)) + "  result")
    for row in all_rows(run):
        result = {True: "met", False: "MISSED", None: ""}[row.met]
        cells = (row.medium, row.measure, row.ours, row.reference, row.ratio, row.target)
        print("  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)) + f"  {result}")
    for medium in run.media:
        for name, passed, detail in medium.checks:
            print(f"{medium.name:<7}  check: {name:<44} {'OK' if passed else 'WRONG'}  {detail}")
    for error in run.errors:
        print(f"error: {error}")
    status = verdict(run)
    print(
        {0: "all targets met", 1: "a target was missed", 2: "the run could not be completed"}[
            status
        ]
    )
    return status


def as_json(run: Run) -> dict[str, Any]:
    return {
        "machine": run.machine,
        "load_before": run.load,
        "rest_server": run.rest_server,
        "postgres": run.postgres,
        "options": run.options,
        "media": {
            medium.name: {
                "path": medium.path,
                "filesystem": medium.fstype,
                "figures": medium.figures,
                "rss": medium.rss,
                "checks": [{"name": n, "passed": p, "detail": d} for n, p, d in medium.checks],
            }
            for medium in run.media
        },
        "rows": [row.__dict__ for row in all_rows(run)],
        "errors": run.errors,
        "status": verdict(run),
    }


# --------------------------------------------------------------------------- the run


def filesystem_type(path: Path) -> str:
    """The type of the file system holding ``path`` (the longest mount point above it)."""
    best, kind = "", "?"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) < 3:
                continue
            point = parts[1].replace("\\040", " ")
            inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, parts[2]
    return kind


def machine_load() -> tuple[str, float]:
    """The load average and the share of CPU busy over one second, as text, and that
    share."""
    busy = cpu_busy()
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return f"CPU busy {busy:.0%} over 1 s", busy
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}, CPU busy {busy:.0%} over 1 s", busy


def rotate(sides: Sequence[str], round_: int) -> list[str]:
    """Who goes first alternates: round 1 in the given order, round 2 shifted by one..."""
    shift = (round_ - 1) % len(sides)
    return [*sides[shift:], *sides[:shift]]


@dataclass
class Setup:
    """What every medium needs: the options, test files, password hash, reference."""

    args: argparse.Namespace
    files: TestFiles
    password_hash: str
    rest_binary: Path | None
    postgres: Postgres | None


@contextlib.contextmanager
def started(processes: list[Any], process: Any, *start_args: Any) -> Iterator[Any]:
    """Start ``process`` (a Server, RestServer or Nginx), stopping it on the way out."""
    processes.append(process)
    try:
        process.start(*start_args)
        yield process
    finally:
        process.stop()
        processes.remove(process)


def memory_check(setup: Setup, root: Path, medium: MediumResults, processes: list[Any]) -> None:
    """A fresh server: idle RSS after start-up and one login, then the peak during one
    large upload. The same for a fresh rest-server."""
    args = setup.args
    test = setup.files.get(args.rss_size)
    fresh = Server(root / "rss-server", setup.password_hash, version_size=2 * test.size, parallel=0)
    with started(processes, fresh):
        time.sleep(1.0)  # let start-up work (and the login's hash) finish
        idle = sum(read_status(pid).get("VmRSS", 0) for pid in descendants(fresh.pid))
        settle()
        done = upload_ours(fresh, test, root)
        got, _ = curl_sha256([*fresh.auth, f"{fresh.upload_url}/{done.version}"])
        medium.checks.append(
            (f"server download = file ({human(test.size)})", got == test.sha256, got[:16])
        )
    medium.rss[OURS] = {
        "idle": idle,
        "before": done.rss_before,
        "peak": done.rss_peak,
        "hwm": done.hwm,
        "hwm_reset": int(done.hwm_reset),
    }
    print(
        f"  memory, ours: idle {human(idle)}; {human(test.size)} upload: before "
        f"{human(done.rss_before)}, peak {human(done.rss_peak)}, VmHWM {human(done.hwm)} "
        f"({done.transfer.speed / MiB:.0f} MiB/s)"
    )
    if setup.rest_binary is None:
        return
    rest = RestServer(setup.rest_binary, root / "rss-rest")
    with started(processes, rest, [COLLECTION]):
        time.sleep(0.5)
        idle = sum(read_status(pid).get("VmRSS", 0) for pid in descendants(rest.pid))
        settle()
        up = upload_rest(rest, test)
    medium.rss[REST] = {
        "idle": idle,
        "before": up.rss_before,
        "peak": up.rss_peak,
        "hwm": up.hwm,
        "hwm_reset": int(up.hwm_reset),
    }
    print(
        f"  memory, rest-server: idle {human(idle)}; upload: peak {human(up.rss_peak)}, "
        f"VmHWM {human(up.hwm)} ({up.transfer.speed / MiB:.0f} MiB/s)"
    )


def measure_medium(
    setup: Setup, name: str, root: Path, processes: list[Any], run: Run
) -> MediumResults:
    args = setup.args
    medium = MediumResults(name, str(root), filesystem_type(root))
    run.media.append(medium)
    print(f"\n== {name}: {root} ({medium.fstype})")
    if name == "disk" and medium.fstype in ("tmpfs", "ramfs"):
        print(f"  warning: {root} is on {medium.fstype}, not a disk (see --disk-dir)")
    if args.rss_size and "memory" in args.measures:
        memory_check(setup, root, medium, processes)

    large = setup.files.get(args.size) if "large" in args.measures else None
    small = setup.files.get(SMALL_SIZE)
    small_body = small.path.read_bytes()
    wanted = args.parallel and "parallel" in args.measures
    parallel = setup.files.get(args.parallel_size) if wanted else None
    rounds = args.rounds
    ours = Server(
        root / "server",
        setup.password_hash,
        versions=rounds + 1,
        version_size=2 * max(args.size, args.parallel_size),
        parallel=args.parallel,
    )
    stack = contextlib.ExitStack()
    with stack:
        stack.enter_context(started(processes, ours))
        print(f"  server (SQLite) pid {ours.pid} on {ours.url}")
        ours_pg: Server | None = None
        if setup.postgres is not None:
            ours_pg = Server(
                root / "server-postgres",
                setup.password_hash,
                versions=rounds + 1,
                db_url=setup.postgres.create(),
                parallel=0,
            )
            stack.enter_context(started(processes, ours_pg))
            print(f"  server (PostgreSQL) pid {ours_pg.pid} on {ours_pg.url}")
        rest: RestServer | None = None
        if setup.rest_binary is not None:
            repos = [COLLECTION, SMALL_COLLECTION]
            repos += [f"{PARALLEL_PREFIX}{n}" for n in range(1, args.parallel + 1)]
            rest = RestServer(setup.rest_binary, root / "rest-server")
            stack.enter_context(started(processes, rest, repos))
            print(f"  rest-server pid {rest.pid} on {rest.url}")
        nginx: Nginx | None = None
        if args.nginx:
            nginx = Nginx(root / "nginx")
            stack.enter_context(started(processes, nginx))
            print(f"  nginx {nginx.version} on {nginx.url}")

        # Warm-up (untimed): the first requests of a process pay for lazy imports, caches
        # and connection pools. One 1 MiB download target on each side.
        blobs = BlobMaker(small_body)
        last_small: dict[str, int] = {}  # the version each server's downloads fetch
        for _ in range(2):
            last_small[OURS] = small_uploads_ours(ours, small_body, 2).last
            if ours_pg is not None:
                last_small[OURS_PG] = small_uploads_ours(ours_pg, small_body, 2).last
        rest_download = ""
        if rest is not None:
            small_uploads_rest(rest, blobs, 2, delete=True)
            rest_download, body = blobs.next()
            status, answer = plain_request(
                "POST", rest.blob_url(SMALL_COLLECTION, rest_download), body
            )
            if status != 200:
                raise BenchError(f"rest-server POST answered {status}: {answer[:200]!r}")

        sides = [OURS, *([REST] if rest else []), *([NGINX] if nginx else [])]
        leftovers: list[Callable[[], None]] = []
        last_large = 0
        for round_ in range(1, rounds + 1):
            for clean in leftovers:
                clean()
            leftovers = []
            line: list[str] = []
            if large is not None:
                # 1. large upload, then download, of the same file; a new object every round
                # on every side (nothing is overwritten or rotated inside a timed request).
                name = f"bench-{round_}.gpg"
                for side in rotate(sides, round_):
                    settle()
                    if side == OURS:
                        up = upload_ours(ours, large, root)
                        last_large = up.version
                        medium.add("large upload", OURS, up.transfer.speed)
                        medium.add("large upload cpu", OURS, up.cpu)
                        leftovers.extend(partial(drop_copy, p) for p in ours.stored(up.version))
                    elif side == REST and rest is not None:
                        rest_up = upload_rest(rest, large)
                        medium.add("large upload", REST, rest_up.transfer.speed)
                        medium.add("large upload cpu", REST, rest_up.cpu)
                        leftovers.append(partial(rest.delete, COLLECTION, large.sha256))
                    elif side == NGINX and nginx is not None:
                        medium.add("large upload", NGINX, upload_nginx(nginx, large, name).speed)
                        leftovers.append(partial(drop_copy, nginx.prefix / "webdav" / name))
                for side in rotate(sides, round_ + 1):
                    if side == OURS:
                        down, cpu = download_ours(ours, last_large)
                        medium.add("large download", OURS, down.speed)
                        medium.add("large download cpu", OURS, cpu)
                    elif side == REST and rest is not None:
                        down, cpu = download_rest(rest, large)
                        medium.add("large download", REST, down.speed)
                        medium.add("large download cpu", REST, cpu)
                    elif side == NGINX and nginx is not None:
                        medium.add("large download", NGINX, download_nginx(nginx, name).speed)
                line.append(
                    "large up/down MiB/s "
                    + ", ".join(
                        f"{side} {medium.figures['large upload'][side][-1] / MiB:.0f}"
                        f"/{medium.figures['large download'][side][-1] / MiB:.0f}"
                        for side in sides
                    )
                )

            if "small" in args.measures:
                # 2. sequential 1 MiB uploads over one keep-alive connection.
                small_sides = [
                    OURS,
                    *([OURS_PG] if ours_pg else []),
                    *([REST, REST_DELETE] if rest else []),
                ]
                for side in rotate(small_sides, round_):
                    if side == OURS:
                        result = small_uploads_ours(ours, small_body, args.small_count)
                        last_small[side] = result.last
                    elif side == OURS_PG and ours_pg is not None:
                        result = small_uploads_ours(ours_pg, small_body, args.small_count)
                        last_small[side] = result.last
                    elif rest is not None:
                        result = small_uploads_rest(
                            rest, blobs, args.small_count, delete=side == REST_DELETE
                        )
                    else:
                        continue
                    medium.add("small rate", side, result.rate)
                    medium.add("small p50", side, 1000 * statistics.median(result.seconds))
                    medium.add("small cpu", side, result.cpu_ms)
                line.append(
                    "1 MiB uploads/s "
                    + ", ".join(
                        f"{side} {medium.figures['small rate'][side][-1]:.0f}"
                        for side in small_sides
                    )
                )

            if "download" in args.measures:
                # 3. 1 MiB download latency over one keep-alive connection.
                download_sides = [OURS, *([OURS_PG] if ours_pg else []), *([REST] if rest else [])]
                for side in rotate(download_sides, round_):
                    if side == OURS:
                        path = urllib.parse.urlsplit(ours.versions_url(SMALL_COLLECTION)).path
                        result = downloads(
                            ours.pid,
                            ours.url,
                            f"{path}/{last_small[OURS]}",
                            small.size,
                            args.download_count,
                            {"Authorization": f"Bearer {ours.token}"},
                        )
                    elif side == OURS_PG and ours_pg is not None:
                        path = urllib.parse.urlsplit(ours_pg.versions_url(SMALL_COLLECTION)).path
                        result = downloads(
                            ours_pg.pid,
                            ours_pg.url,
                            f"{path}/{last_small[OURS_PG]}",
                            small.size,
                            args.download_count,
                            {"Authorization": f"Bearer {ours_pg.token}"},
                        )
                    elif rest is not None:
                        result = downloads(
                            rest.pid,
                            rest.url,
                            rest.blob_path(SMALL_COLLECTION, rest_download),
                            small.size,
                            args.download_count,
                        )
                    else:
                        continue
                    milliseconds = [1000 * s for s in result.seconds]
                    medium.add("download p50", side, percentile(milliseconds, 0.5))
                    medium.add("download p99", side, percentile(milliseconds, 0.99))
                    medium.add("download cpu", side, result.cpu_ms)
                line.append(
                    "1 MiB download p50 ms "
                    + ", ".join(
                        f"{side} {medium.figures['download p50'][side][-1]:.2f}"
                        for side in download_sides
                    )
                )

            # 4. concurrent uploads to as many collections / repositories.
            if parallel is not None and "parallel" in args.measures:
                parallel_sides = [OURS, *([REST] if rest else [])]
                for side in rotate(parallel_sides, round_):
                    settle()
                    if side == OURS:
                        result_p = parallel_ours(ours, parallel, args.parallel)
                        for n, body in enumerate(result_p.bodies, start=1):
                            version = json.loads(body)["data"]["version"]
                            if version["sha256"] != parallel.sha256:
                                raise BenchError("a concurrent upload recorded a wrong SHA-256")
                            stored = ours.stored(
                                int(version["versionNumber"]), f"{PARALLEL_PREFIX}{n}"
                            )
                            leftovers.extend(partial(drop_copy, p) for p in stored)
                    elif rest is not None:
                        result_p = parallel_rest(rest, parallel, args.parallel)
                        for n in range(1, args.parallel + 1):
                            repo = f"{PARALLEL_PREFIX}{n}"
                            leftovers.append(partial(rest.delete, repo, parallel.sha256))
                    else:
                        continue
                    medium.add("parallel", side, result_p.bytes_per_second)
                    medium.add("parallel peak rss", side, result_p.rss_peak)
                    medium.add("parallel cpu", side, result_p.cpu)
                line.append(
                    "at once MiB/s "
                    + ", ".join(
                        f"{side} {medium.figures['parallel'][side][-1] / MiB:.0f}"
                        for side in parallel_sides
                    )
                )
            print(f"  round {round_}/{rounds}: " + "; ".join(line))

        if large is not None:
            # Correctness (untimed): what each side returns is the file that was sent.
            got, size = curl_sha256([*ours.auth, f"{ours.upload_url}/{last_large}"])
            medium.checks.append(
                ("server download = file", got == large.sha256 and size == large.size, got[:16])
            )
            got, _ = curl_sha256([*ours.auth, f"{ours.upload_url}/latest"])
            medium.checks.append(("server 'latest' = file", got == large.sha256, got[:16]))
            if rest is not None:
                got, _ = curl_sha256([rest.blob_url(COLLECTION, large.sha256)])
                medium.checks.append(("rest-server download = file", got == large.sha256, got[:16]))
    return medium


def disk_folder(args: argparse.Namespace) -> Path:
    if args.disk_dir is not None:
        return Path(args.disk_dir)
    for candidate in ("/var/tmp", tempfile.gettempdir()):
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK):
            return Path(candidate)
    return Path(tempfile.gettempdir())


def encode_password() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "backup_repository", "--encode-password", "-"],
        input=PASSWORD,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"--encode-password failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


MEASURES = ("large", "small", "download", "parallel", "memory")


def measures_parser(measures: Sequence[str]) -> Callable[[str], list[str]]:
    """The ``--measures`` option's parser: a comma-separated, non-empty subset of
    ``measures``."""

    def parse(text: str) -> list[str]:
        chosen = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [m for m in chosen if m not in measures]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"measures are {', '.join(measures)}, not {text!r}")
        return chosen

    return parse


parse_measures = measures_parser(MEASURES)


def parse_media(text: str) -> list[str]:
    media = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [m for m in media if m not in ("tmpfs", "disk")]
    if unknown or not media:
        raise argparse.ArgumentTypeError(f"media are tmpfs and/or disk, not {text!r}")
    return media


QUICK: dict[str, Any] = {
    "media": ["tmpfs"],
    "rounds": 2,
    "size": 16 * MiB,
    "small_count": 20,
    "download_count": 50,
    "parallel_size": 4 * MiB,
    "rss_size": 64 * MiB,
}
FULL: dict[str, Any] = {
    "media": ["tmpfs", "disk"],
    "rounds": 5,
    "size": 512 * MiB,
    "small_count": 100,
    "download_count": 200,
    "parallel_size": 64 * MiB,
    "rss_size": 1024 * MiB,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--rest-server",
        type=Path,
        default=os.environ.get(REST_SERVER_ENV) or None,
        help=f"restic's rest-server binary, the reference (default: ${REST_SERVER_ENV}); "
        "without it the server is measured alone",
    )
    parser.add_argument(
        "--media",
        type=parse_media,
        help="where the servers keep their data: tmpfs (/dev/shm), disk (a temporary "
        "folder, see --disk-dir), or both in this order (default tmpfs,disk; --quick tmpfs)",
    )
    parser.add_argument(
        "--disk-dir", help="the folder on disk for the data and test files (default /var/tmp)"
    )
    parser.add_argument(
        "--rounds",
        "--repeat",
        type=int,
        help="interleaved rounds; the median counts (default 5, --quick 2)",
    )
    parser.add_argument(
        "--size", type=parse_size, help="the large upload and download (default 512M)"
    )
    parser.add_argument(
        "--small-count",
        type=int,
        help="sequential 1 MiB uploads per round and side (default 100)",
    )
    parser.add_argument(
        "--download-count", type=int, help="1 MiB downloads per round and side (default 200)"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=8,
        help="concurrent uploads, each to its own collection (default 8; 0 to skip)",
    )
    parser.add_argument(
        "--parallel-size", type=parse_size, help="size of each concurrent upload (default 64M)"
    )
    parser.add_argument(
        "--rss-size",
        type=parse_size,
        help="the upload of the memory check on a fresh server (default 1G; 0 to skip)",
    )
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help="a PostgreSQL URL allowed to create databases, for the PostgreSQL figures "
        f"(default {DEFAULT_POSTGRES}, skipped when not reachable; 'none' to skip)",
    )
    parser.add_argument(
        "--measures",
        type=parse_measures,
        default=list(MEASURES),
        help=f"which measures to run, comma-separated (default all: {','.join(MEASURES)})",
    )
    parser.add_argument(
        "--nginx",
        action="store_true",
        help="also run nginx (WebDAV PUT) as an extra reference for the large transfers",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, 2 rounds, tmpfs only (under a minute): checks that the script works",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folders (logs, configurations)"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.small_count < 1 or args.download_count < 1:
        parser.error("--small-count and --download-count must be at least 1")
    if args.parallel < 0:
        parser.error("--parallel must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("curl", "gpg", "head"):
        if not shutil.which(tool):
            print(f"error: {tool} is not installed", file=sys.stderr)
            return 2

    if args.nginx and not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        print("error: --nginx: nginx is not installed (Debian: nginx-light)", file=sys.stderr)
        return 2

    stop_on_signals()
    run = Run(
        options={
            key: getattr(args, key)
            for key in (
                "rounds",
                "size",
                "small_count",
                "download_count",
                "parallel",
                "parallel_size",
                "rss_size",
                "media",
                "measures",
                "nginx",
                "quick",
            )
        }
    )
    folders: list[Path] = []
    processes: list[Any] = []
    files: TestFiles | None = None
    postgres: Postgres | None = None
    status = 2
    try:
        base = Path(tempfile.mkdtemp(prefix="br-bench-", dir=disk_folder(args)))
        folders.append(base)
        files = TestFiles(base / "files")
        run.machine = machine_line()
        run.load, busy = machine_load()
        print(run.machine)
        print(f"load before the run: {run.load}")
        if busy > 0.1:
            print("warning: other work is running on this machine; the figures will be noisy")
        if args.rest_server is None:
            print(BUILD_HINT.format(env=REST_SERVER_ENV))
            rest_binary = None
        else:
            rest_binary = Path(args.rest_server).resolve()
            run.rest_server = f"{rest_server_version(rest_binary)} ({rest_binary.name})"
            print(f"reference: {run.rest_server}")
        if args.postgres.lower() != "none":
            postgres = Postgres(args.postgres)
            problem = postgres.reachable()
            if problem:
                run.postgres = f"not reachable at {postgres.safe} ({problem}); skipped"
                postgres = None
            else:
                run.postgres = f"{postgres.safe} (a fresh database per medium)"
        else:
            run.postgres = "skipped (--postgres none)"
        print(f"PostgreSQL: {run.postgres}")
        setup = Setup(args, files, encode_password(), rest_binary, postgres)
        for name in args.media:
            if name == "tmpfs":
                if not os.path.isdir("/dev/shm"):
                    raise BenchError("/dev/shm does not exist (use --media disk)")
                root = Path(tempfile.mkdtemp(prefix="br-bench-", dir="/dev/shm"))
                folders.append(root)
            else:
                root = base / "disk"
                root.mkdir()
            try:
                measure_medium(setup, name, root, processes, run)
            except BenchError as exc:  # the other media are still measured
                run.errors.append(f"{name}: {exc}")
                print(f"\nerror on {name}: {exc}", file=sys.stderr)
        status = report(run)
    except BenchError as exc:
        run.errors.append(str(exc))
        print(f"\nerror: {exc}", file=sys.stderr)
        status = report(run)
    except Interrupted as exc:
        print(f"\ninterrupted ({exc}); cleaning up", file=sys.stderr)
        status = 130
    finally:
        # A second Ctrl-C must not leave processes behind halfway through the clean-up.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for process in list(processes):
            process.stop()
        if files is not None:
            files.close()
        if postgres is not None:
            postgres.drop_all()
        for folder in folders:
            if args.keep:
                print(f"kept {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
    if args.json and status in (0, 1, 2):
        args.json.write_text(json.dumps(as_json(run), indent=2) + "\n")
    return status


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat): other work on the machine
    makes the figures meaningless, since both servers and curl share its cores."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    busy_before, total_before = sample()
    time.sleep(seconds)
    busy_after, total_after = sample()
    return (busy_after - busy_before) / max(1, total_after - total_before)


def machine_line() -> str:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        from importlib.metadata import version

        granian = version("granian")
    except Exception:
        granian = "?"
    return (
        f"machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, granian {granian}"
    )


if __name__ == "__main__":
    sys.exit(main())
