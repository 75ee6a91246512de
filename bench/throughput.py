"""Upload/download throughput of the server against nginx (WebDAV PUT) on loopback.

Starts nginx and the server side by side in temporary folders, generates real OpenPGP
encrypted files with ``gpg``, and moves them with ``curl`` to and from each. Prints the
server's throughput as a share of nginx's, the server's peak RSS during uploads, and
whether the peak grows with the file size. Exits 1 when a target is missed, 2 when the
run could not be done (or a download did not match the upload).

    .venv/bin/python bench/throughput.py [--size 512M] [--repeat 3] [--rss-sizes 64M,1G]

Only the standard library and the project's own dependencies are used. Everything it
starts or writes is removed on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import grp
import hashlib
import json
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
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MiB = 1024 * 1024
COLLECTION = "bench"
USERNAME = "bench-admin"
PASSWORD = "bench-password"  # noqa: S105 - a throw-away account on a loopback server
JWT_SECRET = "bench-jwt-secret-that-is-long-enough-for-hs256"  # noqa: S105

UPLOAD_TARGET = 0.6  # share of nginx's upload speed
DOWNLOAD_TARGET = 0.7  # share of nginx's download speed
RSS_LIMIT = 128 * MiB  # peak resident memory of the server during an upload
RSS_GROWTH_LIMIT = 16 * MiB  # "independent of file size": largest minus smallest peak

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
) -> subprocess.Popen[bytes]:
    """Start ``python -m backup_repository`` on a loopback port with SQLite, file://
    storage and ``documents`` as its configuration, and wait until /health answers."""
    config = workdir / "config"
    config.mkdir(parents=True)
    (config / "objects.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
    command = [
        sys.executable,
        "-m",
        "backup_repository",
        f"--listen=127.0.0.1:{port}",
        "--db-url",
        f"sqlite:///{workdir / 'db.sqlite'}",
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
    wait_http(f"http://127.0.0.1:{port}/health", process, log)
    return process


class Server:
    def __init__(self, workdir: Path, password_hash: str, versions: int = 3) -> None:
        self.workdir = workdir
        self.versions = max(3, versions)
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
            self.workdir, self.port, self.documents(), storage, self.log, NO_RATE_LIMITS
        )
        self.token = self.login()

    def documents(self) -> list[dict[str, Any]]:
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
            {
                "apiVersion": "backups.riotkit.org/v1alpha1",
                "kind": "BackupCollection",
                "metadata": {"name": COLLECTION},
                "spec": {
                    "description": "throughput benchmark",
                    "filenameTemplate": "bench-${version}.gpg",
                    "maxBackupsCount": self.versions,
                    "maxOneVersionSize": "2G",
                    "maxCollectionSize": f"{2 * self.versions}G",
                    "strategyName": "fifo",
                    "strategySpec": {},
                    "accessControl": [],
                },
            },
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
            raise BenchError(f"login failed: {exc.code} {exc.read()[:500]!r}") from None

    @property
    def auth(self) -> list[str]:
        return ["-H", f"Authorization: Bearer {self.token}"]

    @property
    def upload_url(self) -> str:
        return f"{self.url}/api/stable/repository/collection/{COLLECTION}/version"

    def stored(self, version: int) -> list[Path]:
        """The file:// storage's file(s) of a version (the bench's template names them)."""
        return list((self.workdir / "storage").rglob(f"bench-{version}.gpg"))

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM)


# --------------------------------------------------------------------------- the run


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


@dataclass
class Results:
    size: int = 0
    repeat: int = 0
    nginx_up: list[float] = field(default_factory=list)
    nginx_down: list[float] = field(default_factory=list)
    ours_up: list[float] = field(default_factory=list)
    ours_down: list[float] = field(default_factory=list)
    ours_up_cpu: list[float] = field(default_factory=list)
    ours_down_cpu: list[float] = field(default_factory=list)
    rss_peaks: list[int] = field(default_factory=list)
    hwms: list[int] = field(default_factory=list)
    rss_idle: list[int] = field(default_factory=list)
    rss_by_size: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    hwm_reset: bool = True  # VmHWM could be reset before each upload (else it is ignored)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)


def upload_ours(server: Server, test: TestFile, scratch: Path) -> Upload:
    response = scratch / "upload-response.json"
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
                server.upload_url,
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


def speed(values: list[float]) -> str:
    return f"{statistics.median(values) / MiB:8.1f} MiB/s" if values else "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=parse_size,
        default=parse_size("512M"),
        help="plaintext size of the file compared with nginx (default 512M)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="transfers per direction and server; the median counts (default 3)",
    )
    parser.add_argument(
        "--rss-sizes",
        type=parse_sizes,
        default=parse_sizes("64M,1G"),
        help="sizes for the peak-RSS-vs-size check, each on a fresh server "
        "(default 64M,1G; empty to skip)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (logs, configs) for inspection",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    for tool in ("curl", "gpg", "head"):
        if not shutil.which(tool):
            print(f"error: {tool} is not installed", file=sys.stderr)
            return 2

    stop_on_signals()
    root = Path(tempfile.mkdtemp(prefix="br-bench-"))
    files = TestFiles(root / "files")
    nginx = Nginx(root / "nginx")
    servers: list[Server] = []
    results = Results(size=args.size, repeat=args.repeat)
    status = 2
    try:
        status = run(args, root, files, nginx, servers, results)
    except BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        report(results, nginx)
    except Interrupted as exc:
        print(f"\ninterrupted ({exc}); cleaning up", file=sys.stderr)
        status = 130
    finally:
        # A second Ctrl-C must not leave processes behind halfway through the clean-up.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for server in servers:
            server.stop()
        nginx.stop()
        files.close()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json and status in (0, 1):
        args.json.write_text(json.dumps(as_json(results, nginx), indent=2) + "\n")
    return status


def encode_password() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "backup_repository", f"--encode-password={PASSWORD}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"--encode-password failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def run(
    args: argparse.Namespace,
    root: Path,
    files: TestFiles,
    nginx: Nginx,
    servers: list[Server],
    results: Results,
) -> int:
    print(machine_line())
    busy = cpu_busy()
    print(f"  CPU busy before the run: {busy:.0%}")
    if busy > 0.1:
        print("  warning: other work is running on this machine; the figures will be noisy")
    test = files.get(args.size)
    password_hash = encode_password()

    nginx.start()
    # Room for every round: no timed upload replaces anything (see the README).
    server = Server(root / "server", password_hash, versions=args.repeat)
    servers.append(server)
    server.start()
    print(f"  nginx {nginx.version} on {nginx.url}; server (pid {server.pid}) on {server.url}")

    last: Upload | None = None
    leftovers: list[Path] = []
    for round_ in range(1, args.repeat + 1):
        for path in leftovers:
            drop_copy(path)
        # A new object on both sides every round: nothing is deleted or overwritten inside
        # a timed request (unlinking a cached 512 MiB file costs ~0.2 s here, which nginx
        # would pay on an overwrite and the server on a rotation).
        name = f"bench-{round_}.gpg"
        # Alternate who goes first so neither always meets the other's writeback.
        order = ("nginx", "server") if round_ % 2 else ("server", "nginx")
        for who in order:
            settle()
            if who == "nginx":
                nginx_up = upload_nginx(nginx, test, name)
            else:
                last = upload_ours(server, test, root)
        assert last is not None
        results.nginx_up.append(nginx_up.speed)
        results.ours_up.append(last.transfer.speed)
        results.ours_up_cpu.append(last.cpu)
        results.rss_peaks.append(last.rss_peak)
        results.hwms.append(last.hwm)
        results.rss_idle.append(last.rss_before)
        results.hwm_reset = results.hwm_reset and last.hwm_reset
        nginx_down = download_nginx(nginx, name)
        results.nginx_down.append(nginx_down.speed)
        ours_down, cpu = download_ours(server, last.version)
        results.ours_down.append(ours_down.speed)
        results.ours_down_cpu.append(cpu)
        leftovers = [nginx.prefix / "webdav" / name, *server.stored(last.version)]
        print(
            f"  round {round_}/{args.repeat}: up nginx {nginx_up.speed / MiB:7.1f} MiB/s, "
            f"ours {last.transfer.speed / MiB:7.1f} MiB/s (peak RSS {human(last.rss_peak)}); "
            f"down nginx {nginx_down.speed / MiB:7.1f} MiB/s, "
            f"ours {ours_down.speed / MiB:7.1f} MiB/s"
        )
    assert last is not None

    # Correctness: what each side returns is byte for byte the file that was sent.
    got, size = curl_sha256([*server.auth, f"{server.upload_url}/{last.version}"])
    results.checks.append(
        (
            "server download SHA-256 = file",
            got == test.sha256 and size == test.size,
            f"{got[:16]}… {size} bytes",
        )
    )
    results.checks.append(
        ("server's recorded sha256 = file", last.sha256 == test.sha256, f"{last.sha256[:16]}…")
    )
    got, size = curl_sha256([*server.auth, f"{server.upload_url}/latest"])
    results.checks.append(("server 'latest' = file", got == test.sha256, f"{got[:16]}…"))
    got, size = curl_sha256([f"{nginx.url}/{name}"])
    results.checks.append(("nginx download SHA-256 = file", got == test.sha256, f"{got[:16]}…"))
    server.stop()

    for rss_size in args.rss_sizes:
        rss_test = files.get(rss_size)
        fresh = Server(root / f"server-rss-{rss_size}", password_hash)
        servers.append(fresh)
        fresh.start()
        settle()
        done = upload_ours(fresh, rss_test, root)
        got, _ = curl_sha256([*fresh.auth, f"{fresh.upload_url}/{done.version}"])
        results.checks.append(
            (
                f"server download SHA-256 = file ({human(rss_size)})",
                got == rss_test.sha256,
                f"{got[:16]}…",
            )
        )
        results.rss_by_size[rss_size] = (done.rss_before, done.rss_peak, done.hwm)
        results.hwm_reset = results.hwm_reset and done.hwm_reset
        print(
            f"  RSS check {human(rss_size)}: idle {human(done.rss_before)}, "
            f"peak {human(done.rss_peak)} (VmHWM {human(done.hwm)}), "
            f"{done.transfer.speed / MiB:.1f} MiB/s"
        )
        fresh.stop()

    return report(results, nginx)


def verdicts(results: Results) -> list[tuple[str, str, str, bool | None]]:
    rows: list[tuple[str, str, str, bool | None]] = []
    if results.nginx_up and results.ours_up:
        ratio = statistics.median(results.ours_up) / statistics.median(results.nginx_up)
        rows.append(
            ("upload / nginx", f"{ratio:.2f}", f">= {UPLOAD_TARGET}", ratio >= UPLOAD_TARGET)
        )
    if results.nginx_down and results.ours_down:
        ratio = statistics.median(results.ours_down) / statistics.median(results.nginx_down)
        rows.append(
            ("download / nginx", f"{ratio:.2f}", f">= {DOWNLOAD_TARGET}", ratio >= DOWNLOAD_TARGET)
        )
    # VmHWM catches spikes between samples, but only counts when it was reset before the
    # upload: otherwise it holds the peak since start-up (a login's Argon2 takes 64 MiB).
    use_hwm = results.hwm_reset
    peaks = list(results.rss_peaks) + [peak for _, peak, _ in results.rss_by_size.values()]
    hwms = list(results.hwms) + [hwm for _, _, hwm in results.rss_by_size.values()]
    if peaks:
        peak = max(max(peaks), max(hwms, default=0) if use_hwm else 0)
        rows.append(("peak RSS in uploads", human(peak), f"< {human(RSS_LIMIT)}", peak < RSS_LIMIT))
    if len(results.rss_by_size) >= 2:
        ordered = sorted(results.rss_by_size.items())
        small, large = ordered[0], ordered[-1]
        growth = max(large[1][1], large[1][2] if use_hwm else 0) - max(
            small[1][1], small[1][2] if use_hwm else 0
        )
        rows.append(
            (
                f"peak RSS {human(large[0])} - {human(small[0])}",
                human(growth) if growth >= 0 else f"-{human(-growth)}",
                f"<= {human(RSS_GROWTH_LIMIT)}",
                growth <= RSS_GROWTH_LIMIT,
            )
        )
    return rows


def report(results: Results, nginx: Nginx) -> int:
    print()
    print(f"File: {human(results.size)} OpenPGP message, {results.repeat} transfers each, medians")
    print(f"{'':24}{'nginx':>16}{'server':>16}{'server CPU':>14}")
    cpu_up = f"{statistics.median(results.ours_up_cpu):.2f} s" if results.ours_up_cpu else "-"
    cpu_down = f"{statistics.median(results.ours_down_cpu):.2f} s" if results.ours_down_cpu else "-"
    print(f"{'upload':24}{speed(results.nginx_up):>16}{speed(results.ours_up):>16}{cpu_up:>14}")
    print(
        f"{'download':24}{speed(results.nginx_down):>16}{speed(results.ours_down):>16}{cpu_down:>14}"
    )
    if not results.hwm_reset:
        print("note: VmHWM could not be reset (/proc/PID/clear_refs); only samples count")
    if results.rss_peaks:
        print(
            f"server RSS during uploads: idle {human(max(results.rss_idle))}, "
            f"peak sampled {human(max(results.rss_peaks))}, VmHWM {human(max(results.hwms))}"
        )
    for size, (idle, peak, hwm) in sorted(results.rss_by_size.items()):
        print(
            f"fresh server, {human(size)} upload: idle {human(idle)}, "
            f"peak {human(peak)}, VmHWM {human(hwm)}"
        )
    print()
    print(f"{'target':44}{'measured':>12}{'goal':>12}  result")
    failed = False
    rows = verdicts(results)
    for name, measured, goal, passed in rows:
        failed = failed or passed is False
        print(f"{name:44}{measured:>12}{goal:>12}  {'PASS' if passed else 'MISS'}")
    broken = False
    for name, passed, detail in results.checks:
        broken = broken or not passed
        print(f"{name:44}{'OK' if passed else 'WRONG':>8}  {detail}")
    complete = len(rows) >= 3 and bool(results.checks)
    if broken or not complete:
        return 2
    return 1 if failed else 0


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


def as_json(results: Results, nginx: Nginx) -> dict[str, Any]:
    return {
        "machine": machine_line(),
        "nginx": nginx.version,
        "size": results.size,
        "repeat": results.repeat,
        "bytes_per_second": {
            "nginx_upload": results.nginx_up,
            "nginx_download": results.nginx_down,
            "server_upload": results.ours_up,
            "server_download": results.ours_down,
        },
        "server_cpu_seconds": {"upload": results.ours_up_cpu, "download": results.ours_down_cpu},
        "rss": {
            "idle": results.rss_idle,
            "peak": results.rss_peaks,
            "hwm": results.hwms,
            "by_size": {
                str(k): dict(zip(("idle", "peak", "hwm"), v, strict=True))
                for k, v in results.rss_by_size.items()
            },
        },
        "targets": [
            {"name": n, "measured": m, "goal": g, "passed": p} for n, m, g, p in verdicts(results)
        ],
        "checks": [{"name": n, "passed": p, "detail": d} for n, p, d in results.checks],
    }


if __name__ == "__main__":
    sys.exit(main())
