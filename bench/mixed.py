"""Mixed load on one server: do cheap requests stay cheap while Argon2 logins run?

Starts ``python -m backup_repository`` (SQLite, ``file://`` storage, rate limits off, in a
temporary folder) and drives it from a **second process** (so the load generator never
takes the server's GIL) with closed-loop clients for ``--duration`` seconds. Each client
has one role and repeats it without think time over its own keep-alive connection:

    whoami     GET /api/stable/auth/whoami with a bearer token
    listing    GET the version listing of the read-only collection
    download   GET a 256 KiB version of the read-only collection (bytes checked)
    upload     POST a 256 KiB OpenPGP message to the client's own collection (so no 409)
    login      POST /api/stable/auth/login with the right password (one Argon2 check)

The default mix is the issue's: 32 clients for 30 s, 8 whoami, 8 listing, 8 download,
4 upload, 4 login. The load generator speaks HTTP/1.1 over asyncio streams itself (a few
tens of microseconds of CPU per request, against several hundred for an HTTP library), so
on a small machine it leaves the cores to the server.

Prints requests per second and p50/p90/p99/max per operation, errors (any status other
than the intended one, or a transport error), the server's CPU time by thread (the event
loop, the Argon2 pool, the threads that have ended, such as the ones libargon2 starts for
its lanes) with the time each waited for a CPU (``/proc/PID/task/TID/schedstat``), and the
server's RSS (idle, peak). Exit status 1 when a target is missed or an answer was wrong, 2
when the run could not be done.

    .venv/bin/python bench/mixed.py [--duration 30] [--json FILE]

See bench/README.md ("mixed.py").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the padding helper and the gpg keyring

from throughput import (  # noqa: E402 - a sibling module of this script
    BenchError,
    Interrupted,
    cpu_busy,
    cpu_seconds,
    descendants,
    free_port,
    human,
    launch_server,
)

KiB = 1024
MiB = 1024 * KiB
USER = ("mixed-user", "mixed-user-password")
READ_COLLECTION = "mixed-read"
READ_VERSIONS = 5
KEEP_VERSIONS = 3  # the upload collections rotate after the third version
ROLES = ("whoami", "listing", "download", "upload", "login")
DEFAULT_MIX = "whoami=8,listing=8,download=8,upload=4,login=4"
# Target 5 of the performance issue: milliseconds, per operation and percentile.
TARGETS = (("whoami", "p50_ms", 25.0), ("listing", "p50_ms", 25.0), ("download", "p99_ms", 300.0))
API = "/api/stable"


class MixError(ValueError):
    """A --mix that names an unknown role or no client at all."""


def parse_mix(text: str) -> dict[str, int]:
    """``whoami=8,listing=8,...`` -> clients per role (roles left out get none)."""
    mix = dict.fromkeys(ROLES, 0)
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, count = part.partition("=")
        name = name.strip()
        if name not in mix or not sep or not count.strip().isdigit():
            raise MixError(f"{part.strip()!r}: expected ROLE=COUNT with ROLE one of {ROLES}")
        mix[name] = int(count)
    if not any(mix.values()):
        raise MixError("the mix has no client")
    return mix


def percentile(ordered: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]


# --------------------------------------------------------------------------- the server


def documents(password_hash: str, upload_collections: Sequence[str], size: int) -> list[Any]:
    def collection(name: str, keep: int) -> dict[str, Any]:
        return {
            "apiVersion": "backups.riotkit.org/v1alpha1",
            "kind": "BackupCollection",
            "metadata": {"name": name},
            "spec": {
                "description": "mixed load",
                "filenameTemplate": f"{name}-${{version}}.gpg",
                "maxBackupsCount": keep,
                "maxOneVersionSize": f"{2 * size // KiB}K",
                "maxCollectionSize": f"{2 * size * keep // KiB}K",
                "strategyName": "fifo",
                "strategySpec": {},
                "accessControl": [
                    {
                        "name": USER[0],
                        "type": "user",
                        "roles": ["backupUploader", "backupDownloader"],
                    }
                ],
            },
        }

    user = {
        "apiVersion": "backups.riotkit.org/v1alpha1",
        "kind": "BackupUser",
        "metadata": {"name": USER[0]},
        "spec": {
            "email": f"{USER[0]}@example.org",
            "deactivated": False,
            "password": password_hash,
            "roles": [],
        },
    }
    return [
        user,
        collection(READ_COLLECTION, READ_VERSIONS),
        *(collection(name, KEEP_VERSIONS) for name in upload_collections),
    ]


def make_message(size: int) -> bytes:
    """A real OpenPGP message (gpg, symmetric) padded to ``size`` bytes."""
    from gpg_fixtures import GpgHome, pad_to

    home = GpgHome.create(Path(tempfile.mkdtemp(prefix="br-mixed-gpg-")))
    try:
        message = home.encrypt(os.urandom(1024), symmetric=True, compress=False)
    finally:
        home.close()
    return pad_to(message, size)


def call(
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: bytes | None = None,
    json_body: Any = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    elif body is not None:
        headers["Content-Type"] = "application/octet-stream"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 - loopback
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


# --------------------------------------------------------------------------- threads


@dataclass
class ThreadTimes:
    """CPU and run-queue wait of one thread, in seconds (``schedstat``: time on a CPU,
    time runnable but waiting for one), and its nice value."""

    name: str
    cpu: float
    waited: float
    nice: int


def thread_times(pid: int) -> dict[int, ThreadTimes]:
    found: dict[int, ThreadTimes] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                    name = comm.read().strip()
                with open(f"/proc/{pid}/task/{tid}/schedstat") as schedstat:
                    ran, waited, _ = schedstat.read().split()
                with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                    nice = int(stat.read().rsplit(")", 1)[1].split()[16])
            except (OSError, ValueError, IndexError):
                continue
            found[int(tid)] = ThreadTimes(name, int(ran) / 1e9, int(waited) / 1e9, nice)
    return found


def thread_group(pid: int, tid: int, thread: ThreadTimes) -> str:
    """The event loop runs on the main thread; the hashing pool's threads are the ones at
    a lower priority (with the server's own priority they are among the ``python`` threads,
    with the database's and the uploads' worker threads); others go by their name without a
    trailing number."""
    if tid == pid:
        return "event loop (main thread)"
    if thread.nice > 0:
        return f"nice {thread.nice} (argon2 pool)"
    return thread.name.rstrip("0123456789-_ ") or thread.name


def thread_report(pid: int, before: dict[int, ThreadTimes], after: dict[int, ThreadTimes],
                  process_cpu: float) -> dict[str, dict[str, float]]:  # fmt: skip
    """CPU and run-queue wait per thread group over the run; the CPU of threads that ended
    during it (libargon2 starts one per lane of each hash) is what the process used
    beyond the live threads."""
    groups: dict[str, dict[str, float]] = defaultdict(lambda: {"cpu_s": 0.0, "waited_s": 0.0})
    for tid, now in after.items():
        then = before.get(tid, ThreadTimes(now.name, 0.0, 0.0, now.nice))
        group = groups[thread_group(pid, tid, now)]
        group["cpu_s"] += now.cpu - then.cpu
        group["waited_s"] += now.waited - then.waited
    live = sum(g["cpu_s"] for g in groups.values())
    groups["threads that ended"]["cpu_s"] = max(0.0, process_cpu - live)
    return {name: {k: round(v, 2) for k, v in g.items()} for name, g in sorted(groups.items())}


def filesystem(path: Path) -> str:
    """The type of the file system holding ``path`` (the longest mount point above it)."""
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1]
            inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, fields[2]
    return kind


def rss(pid: int) -> int:
    total = 0
    for member in descendants(pid):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{member}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * KiB
    return total


class RssMonitor:
    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- main process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (30)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"clients per role ({DEFAULT_MIX})")
    parser.add_argument("--size", type=int, default=256, help="KiB per upload/download (256)")
    parser.add_argument(
        "--password-hash-concurrency", type=int, help="passed to the server (default: its own)"
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="one more server flag (repeatable)"
    )
    parser.add_argument("--py-spy", type=Path, help="record the server with py-spy (raw) here")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    try:
        mix = parse_mix(args.mix)
    except MixError as exc:
        parser.error(str(exc))
    if args.duration <= 0 or args.size < 4:
        parser.error("--duration must be positive and --size at least 4 (KiB)")
    if not shutil.which("gpg"):
        print("error: gpg is not installed", file=sys.stderr)
        return 2

    root = Path(tempfile.mkdtemp(prefix="br-mixed-"))
    processes: list[subprocess.Popen[bytes]] = []
    status = 2
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        status = run(args, mix, root, processes)
    except BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
    except Interrupted as exc:
        print(f"\ninterrupted ({exc}); cleaning up", file=sys.stderr)
        status = 130
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return status


def run(
    args: argparse.Namespace,
    mix: dict[str, int],
    root: Path,
    processes: list[subprocess.Popen[bytes]],
) -> int:
    from backup_repository.services.passwords import PasswordHasher

    size = args.size * KiB
    busy = cpu_busy()
    print(f"{os.cpu_count()} CPUs; CPU busy before the run: {busy:.0%}")
    if busy > 0.1:
        print("  warning: other work is running on this machine; the figures will be noisy")

    hasher = PasswordHasher(1)
    password_hash = hasher.hash_sync(USER[1])
    hasher.close()
    message = make_message(size)
    (root / "message.gpg").write_bytes(message)
    uploads = [f"mixed-up-{n}" for n in range(mix["upload"])]

    workdir = root / "server"
    workdir.mkdir()
    storage = workdir / "storage"
    storage.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = [
        "--rate-default-limit=0",
        "--rate-auth-limit=0",
        "--rate-collection-health-limit=0",
        "--rate-server-health-limit=0",
        *args.server_arg,
    ]
    if args.password_hash_concurrency:
        extra.append(f"--password-hash-concurrency={args.password_hash_concurrency}")
    server = launch_server(
        workdir, port, documents(password_hash, uploads, size), storage, workdir / "server.log",
        extra,
    )  # fmt: skip
    processes.append(server)

    status, answer = call("POST", f"{url}{API}/auth/login",
                          json_body={"username": USER[0], "password": USER[1]})  # fmt: skip
    if status != 200:
        raise BenchError(f"login answered {status}: {answer!r}")
    token = str(answer["data"]["token"])
    versions = f"{url}{API}/repository/collection/{READ_COLLECTION}/version"
    for _ in range(READ_VERSIONS):
        status, answer = call("POST", versions, token=token, body=message)
        if status != 200:
            raise BenchError(f"seeding answered {status}: {answer!r}")
    time.sleep(1.0)
    idle = rss(server.pid)
    storage_fs = filesystem(storage)
    print(f"server pid {server.pid} on {url}; idle RSS {human(idle)}; storage on {storage_fs}")
    shares = ", ".join(f"{role} {count}" for role, count in mix.items() if count)
    print(f"load: {sum(mix.values())} clients ({shares}) for {args.duration:.0f} s, "
          f"{args.size} KiB bodies, from a second process")  # fmt: skip

    config = {
        "host": "127.0.0.1",
        "port": port,
        "duration": args.duration,
        "mix": mix,
        "token": token,
        "user": USER,
        "read_collection": READ_COLLECTION,
        "read_versions": READ_VERSIONS,
        "uploads": uploads,
        "message": str(root / "message.gpg"),
        "output": str(root / "worker-output.json"),
    }
    config_path = root / "worker.json"
    config_path.write_text(json.dumps(config))

    threads_before = thread_times(server.pid)
    cpu_before = cpu_seconds(server.pid)
    spy = None
    if args.py_spy:
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(server.pid),
             "-o", str(args.py_spy), "-f", "raw", "-r", "200", "--nonblocking", "--threads",
             "-d", str(int(args.duration) + 1)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(spy)
    with RssMonitor(server.pid) as monitor, (root / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(worker)
        try:
            worker.wait(timeout=args.duration + 120)
        except subprocess.TimeoutExpired:
            raise BenchError("the load generator did not finish") from None
        process_cpu = cpu_seconds(server.pid) - cpu_before
        threads_after = thread_times(server.pid)
    if spy is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(timeout=30)
    if worker.returncode != 0:
        log_text = (root / "worker.log").read_text(errors="replace")[-3000:]
        raise BenchError(f"the load generator failed ({worker.returncode}):\n{log_text}")
    output = json.loads(Path(config["output"]).read_text())
    alive = server.poll() is None

    seconds = float(output["seconds"])
    operations: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        latencies = sorted(output["latencies"].get(role, []))
        if not latencies and not output["errors"].get(role):
            continue
        operations[role] = {
            "clients": mix[role],
            "requests": len(latencies),
            "per_second": round(len(latencies) / seconds, 1),
            "errors": output["errors"].get(role, 0),
            "p50_ms": round(percentile(latencies, 0.50), 1),
            "p90_ms": round(percentile(latencies, 0.90), 1),
            "p99_ms": round(percentile(latencies, 0.99), 1),
            "max_ms": round(latencies[-1], 1) if latencies else math.nan,
        }
    total = sum(op["requests"] for op in operations.values())
    errors = sum(op["errors"] for op in operations.values())
    targets = []
    for role, key, limit in TARGETS:
        value = operations.get(role, {}).get(key, math.nan)
        targets.append({"operation": role, "figure": key, "limit_ms": limit, "value_ms": value,
                        "met": bool(value <= limit)})  # fmt: skip
    figures = {
        "cpus": os.cpu_count(),
        "cpu_busy_before": round(busy, 3),
        "duration_s": round(seconds, 1),
        "mix": mix,
        "body_kib": args.size,
        "storage_filesystem": storage_fs,
        "requests": total,
        "requests_per_second": round(total / seconds, 1),
        "errors": errors,
        "error_examples": output["examples"],
        "operations": operations,
        "server_cpu_s": round(process_cpu, 1),
        "server_cpu_ms_per_request": round(1000 * process_cpu / max(1, total), 2),
        "load_generator_cpu_s": output["cpu_s"],
        "threads": thread_report(server.pid, threads_before, threads_after, process_cpu),
        "rss": {"idle": idle, "peak": monitor.peak},
        "server_alive": alive,
        "targets": targets,
    }
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if not alive:
        return 2
    return 0 if errors == 0 and all(t["met"] for t in targets) else 1


def report(figures: dict[str, Any]) -> None:
    print()
    print(
        f"{figures['requests']} requests in {figures['duration_s']} s = "
        f"{figures['requests_per_second']} req/s, {figures['errors']} errors; server CPU "
        f"{figures['server_cpu_s']} s ({figures['server_cpu_ms_per_request']} ms/request), "
        f"load generator {figures['load_generator_cpu_s']} s"
    )
    print(f"{'operation':10}{'clients':>8}{'requests':>9}{'req/s':>8}{'errors':>7}"
          f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")  # fmt: skip
    for role, op in figures["operations"].items():
        print(f"{role:10}{op['clients']:>8}{op['requests']:>9}{op['per_second']:>8}"
              f"{op['errors']:>7}{op['p50_ms']:>9}{op['p90_ms']:>9}{op['p99_ms']:>9}"
              f"{op['max_ms']:>9}")  # fmt: skip
    for example in figures["error_examples"]:
        print(f"  error: {example}")
    print("server threads over the run (CPU s, s spent runnable waiting for a CPU):")
    for name, group in figures["threads"].items():
        print(f"  {name:28}{group['cpu_s']:>8.2f}{group['waited_s']:>8.2f}")
    rss_figures = figures["rss"]
    print(f"server RSS: idle {human(rss_figures['idle'])}, peak {human(rss_figures['peak'])}")
    for target in figures["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        print(f"target: {target['operation']} {target['figure'][:3]} <= {target['limit_ms']:.0f} "
              f"ms: {target['value_ms']} ms {verdict}")  # fmt: skip


# --------------------------------------------------------------------------- load generator


class HttpError(Exception):
    """The connection broke or the answer was not HTTP/1.1 as expected."""


class Connection:
    """One keep-alive HTTP/1.1 connection: a request at a time, bodies by Content-Length
    or chunked."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, limit=1 * MiB
            )
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            answer: dict[str, str] = {}
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    answer[name.strip().lower()] = value.strip()
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                content = b""
            elif answer.get("transfer-encoding", "").lower() == "chunked":
                content = await self._chunked()
            elif "content-length" in answer:
                content = await self.reader.readexactly(int(answer["content-length"]))
            else:
                content = await self.reader.read()
                answer["connection"] = "close"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError) as exc:  # fmt: skip
            self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        if answer.get("connection", "").lower() == "close":
            self.close()
        return status, answer, content

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def worker_main(config_path: Path) -> int:
    config = json.loads(config_path.read_text())
    output = asyncio.run(Load(config).run())
    Path(config["output"]).write_text(json.dumps(output))
    return 0


class Load:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.message = Path(config["message"]).read_bytes()
        self.digest = hashlib.sha256(self.message).hexdigest()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.examples: list[str] = []
        self.deadline = 0.0
        token = config["token"]
        self.auth = {"Authorization": f"Bearer {token}"}
        self.login_body = json.dumps({"username": config["user"][0],
                                      "password": config["user"][1]}).encode()  # fmt: skip
        self.base = f"{API}/repository/collection"

    def record(self, role: str, started: float, problem: str | None) -> None:
        if problem is None:
            self.latencies[role].append((time.perf_counter() - started) * 1000)
            return
        self.errors[role] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{role}: {problem}")

    async def client(self, role: str, number: int) -> None:
        connection = Connection(self.config["host"], int(self.config["port"]))
        rng = random.Random(number)  # noqa: S311 - picks versions, reproducibly
        read = f"{self.base}/{self.config['read_collection']}/version"
        upload_to = (
            f"{self.base}/{self.config['uploads'][number]}/version" if role == "upload" else ""
        )
        while time.monotonic() < self.deadline:
            started = time.perf_counter()
            try:
                problem = await self.one(connection, role, read, upload_to, rng)
            except HttpError as exc:
                problem = str(exc)
            self.record(role, started, problem)
        connection.close()

    async def one(self, connection: Connection, role: str, read: str, upload_to: str,
                  rng: random.Random) -> str | None:  # fmt: skip
        if role == "whoami":
            status, _, body = await connection.request("GET", f"{API}/auth/whoami", self.auth)
            ok = status == 200 and b'"mixed-user"' in body
        elif role == "listing":
            status, _, body = await connection.request("GET", read, self.auth)
            ok = status == 200 and b'"versions"' in body
        elif role == "download":
            number = rng.randint(1, int(self.config["read_versions"]))
            status, _, body = await connection.request("GET", f"{read}/{number}", self.auth)
            ok = status == 200 and body == self.message
        elif role == "upload":
            headers = {**self.auth, "Content-Type": "application/octet-stream"}
            status, _, body = await connection.request("POST", upload_to, headers, self.message)
            ok = status == 200 and self.digest.encode() in body
        else:
            headers = {"Content-Type": "application/json"}
            status, _, body = await connection.request(
                "POST", f"{API}/auth/login", headers, self.login_body
            )
            ok = status == 200 and b'"token"' in body
        return None if ok else f"{status}: {body[:200]!r}"

    async def run(self) -> dict[str, Any]:
        mix: dict[str, int] = self.config["mix"]
        self.deadline = time.monotonic() + float(self.config["duration"])
        started = time.monotonic()
        cpu = time.process_time()
        await asyncio.gather(
            *(self.client(role, n) for role, count in mix.items() for n in range(count))
        )
        return {
            "seconds": time.monotonic() - started,
            "latencies": self.latencies,
            "errors": self.errors,
            "examples": self.examples,
            "cpu_s": round(time.process_time() - cpu, 1),
        }


if __name__ == "__main__":
    sys.exit(main())
