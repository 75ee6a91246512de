"""Sustained mixed load on the real server from a second process on loopback.

Starts ``python -m backup_repository`` (SQLite, ``file://`` storage, in a temporary folder)
and, in a separate load-generator process (asyncio + httpx), runs for ``--duration``
seconds: concurrent uploads to several collections (two clients per collection, so some
get 409; sizes that make rotation and quota borrowing happen; deliberately oversized
uploads that must get 413), downloads (by number, ``vN``, ``latest``, ranges, ``HEAD``,
``If-None-Match``), listings, logins (steady, plus bursts of concurrent logins) and
``/health`` through a trusted proxy address with a low rate limit (so 429 is seen).

Meanwhile the server's resident memory is sampled from ``/proc/PID/status`` every 100 ms.
Prints per operation the requests, status counts, unintended answers, p50/p90/p99
latencies and throughput, the RSS (idle, peak, final) against a bound, and the machine's
load. Exits 1 on any unintended answer (a 5xx, a connection error, a status the request
did not expect, a wrong byte) or a broken check (RSS over the bound, an invariant of the
collections), 2 when the run could not be done.

    .venv/bin/python bench/load.py --duration 60 [--json FILE]

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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
    machine_line,
    read_status,
    reset_peak_rss,
    stop_on_signals,
    stop_process,
    tail,
)

MiB = 1024 * 1024
KiB = 1024
ARGON2_MEMORY = 64 * MiB  # memory_cost=65536 KiB per hash (services/passwords.py)
# Room above idle + Argon2 for everything else a loaded server holds at once: a few
# dozen connections with their buffers, seven uploads streaming in chunks through bounded
# queues, SQLAlchemy and Python heap growth (measured 29-36 MiB in runs of 60-150 s, see
# docs/reliability.md). An upload buffered whole, one Argon2 hash more than the pool
# allows, or a leak of a few hundred bytes per request passes it.
RSS_MARGIN = 64 * MiB
JWT_SECRET = "load-jwt-secret-that-is-long-enough-for-hs256"  # noqa: S105 - loopback only
ADMIN = ("load-admin", "load-admin-password")
USER = ("load-user", "load-user-password")

ACTIVE = ("load-1", "load-2", "load-3")  # uploaded to during the run
STATIC = "load-static"  # seeded before the run, then only read
MAX_BACKUPS = 3
MAX_ONE = 1 * MiB
MAX_TOTAL = 4 * MiB  # extra space = 4 - 3 * 1 = 1 MiB that versions may borrow
# Sizes up to s + extra/n (1.33 MiB) are always accepted: the n - 1 versions that remain
# have then borrowed at most (n - 1)/n of the extra space and leave at least that much of
# H. Above s they borrow, so quota borrowing happens; every upload after the third rotates.
UPLOAD_SIZES = (4 * KiB, 64 * KiB, 512 * KiB, 1 * MiB, 1 * MiB + 320 * KiB)
OVERSIZE = MAX_ONE + (MAX_TOTAL - MAX_BACKUPS * MAX_ONE) + 64 * KiB  # over any quota
STATIC_SIZES = (64 * KiB, 1 * MiB, 1 * MiB + 320 * KiB)
RATE_LIMIT_PER_MINUTE = 5  # /health bucket, hit through a trusted-proxy address
FORWARDED_CLIENT = "203.0.113.9"  # TEST-NET-3: the client the trusted proxy names


# --------------------------------------------------------------------------- test files


@dataclass
class LoadFile:
    name: str
    path: Path
    size: int
    sha256: str


def make_files(folder: Path) -> tuple[list[LoadFile], LoadFile, list[LoadFile]]:
    """Two small real OpenPGP messages made with gpg once (one to a public key, one with a
    passphrase), each padded (a padding packet, accepted by the OpenPGP check) to every
    size; returns the upload files, the oversized one and the files of the static
    collection."""
    from gpg_fixtures import GpgHome, pad_to

    folder.mkdir(parents=True)
    # A short path: gpg-agent's socket lives in the home and socket paths are limited.
    home = GpgHome.create(Path(tempfile.mkdtemp(prefix="br-load-gpg-")))
    try:
        plain = os.urandom(1024)
        messages = {
            "pk": home.encrypt(plain, compress=False),
            "sym": home.encrypt(plain, symmetric=True, compress=False),
        }
    finally:
        home.close()

    def padded(kind: str, size: int, label: str) -> LoadFile:
        data = pad_to(messages[kind], size)
        path = folder / f"{label}-{kind}-{size}.gpg"
        path.write_bytes(data)
        return LoadFile(path.name, path, size, hashlib.sha256(data).hexdigest())

    uploads = [padded(kind, size, "up") for size in UPLOAD_SIZES for kind in messages]
    oversize = padded("sym", OVERSIZE, "over")
    static = [padded("pk", size, "static") for size in STATIC_SIZES]
    return uploads, oversize, static


# --------------------------------------------------------------------------- the server


def documents(user_hash: str, admin_hash: str) -> list[dict[str, Any]]:
    def user(name: str, password_hash: str, roles: list[str]) -> dict[str, Any]:
        return {
            "apiVersion": "backups.riotkit.org/v1alpha1",
            "kind": "BackupUser",
            "metadata": {"name": name},
            "spec": {
                "email": f"{name}@example.org",
                "deactivated": False,
                "password": password_hash,
                "roles": roles,
            },
        }

    def collection(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "backups.riotkit.org/v1alpha1",
            "kind": "BackupCollection",
            "metadata": {"name": name},
            "spec": {
                "description": "load test",
                "filenameTemplate": f"{name}-${{version}}.gpg",
                "maxBackupsCount": MAX_BACKUPS,
                "maxOneVersionSize": f"{MAX_ONE // KiB}K",
                "maxCollectionSize": f"{MAX_TOTAL // KiB}K",
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

    return [
        user(ADMIN[0], admin_hash, ["systemAdmin"]),
        user(USER[0], user_hash, []),
        *(collection(name) for name in (*ACTIVE, STATIC)),
    ]


class Server:
    def __init__(self, workdir: Path, hash_concurrency: int | None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        self.storage = workdir / "storage"
        self.hash_concurrency = hash_concurrency
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, docs: list[dict[str, Any]]) -> None:
        self.storage.mkdir(parents=True)
        # Rate limits off except /health, which the load reaches through a trusted proxy on
        # behalf of one client address to show 429 under load.
        extra = [
            "--rate-default-limit=0",
            "--rate-auth-limit=0",
            "--rate-collection-health-limit=0",
            f"--rate-server-health-limit={RATE_LIMIT_PER_MINUTE}",
            "--trusted-proxies=127.0.0.1",
        ]
        if self.hash_concurrency is not None:
            extra.append(f"--password-hash-concurrency={self.hash_concurrency}")
        self.process = launch_server(self.workdir, self.port, docs, self.storage, self.log, extra)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, signal.SIGTERM)
            self.exit_code = self.process.returncode

    def log_problems(self) -> list[str]:
        """Lines the server logged at ERROR or above, and tracebacks."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [
            line
            for line in lines
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
        ]


def request_json(
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: bytes | None = None,
    json_body: Any = None,
) -> tuple[int, Any]:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    elif body is not None:
        headers["Content-Type"] = "application/octet-stream"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 - loopback
            raw = answer.read()
            status = answer.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def login(url: str, credentials: tuple[str, str]) -> str:
    status, answer = request_json(
        "POST",
        f"{url}/api/stable/auth/login",
        json_body={"username": credentials[0], "password": credentials[1]},
    )
    if status != 200:
        raise BenchError(f"login of {credentials[0]} answered {status}: {answer!r}")
    return str(answer["data"]["token"])


def versions_url(url: str, collection: str) -> str:
    return f"{url}/api/stable/repository/collection/{collection}/version"


def upload_file(url: str, token: str, collection: str, file: LoadFile) -> dict[str, Any]:
    status, answer = request_json(
        "POST", versions_url(url, collection), token=token, body=file.path.read_bytes()
    )
    if status != 200:
        raise BenchError(f"seeding {collection} with {file.name} answered {status}: {answer!r}")
    return dict(answer["data"]["version"])


# --------------------------------------------------------------------------- memory


class RssMonitor:
    """Samples the resident memory of the server's process tree every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return sum(read_status(pid).get("VmRSS", 0) for pid in descendants(self.pid))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.rss()))
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)

    def peak_within(self, windows: Sequence[tuple[float, float]], slack: float = 0.3) -> int:
        return max(
            (
                rss
                for t, rss in self.samples
                if any(a - slack <= t <= b + slack for a, b in windows)
            ),
            default=0,
        )

    def peak_outside(self, windows: Sequence[tuple[float, float]], slack: float = 1.0) -> int:
        return max(
            (
                rss
                for t, rss in self.samples
                if not any(a - slack <= t <= b + slack for a, b in windows)
            ),
            default=0,
        )


def default_hash_concurrency() -> int:
    from backup_repository.settings import Settings

    return int(Settings.model_fields["password_hash_concurrency"].default)


# --------------------------------------------------------------------------- figures


def percentile(ordered: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


@dataclass
class OpStats:
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    unintended: int = 0
    latencies: list[float] = field(default_factory=list)
    bytes: int = 0

    def figures(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "requests": self.requests,
            "statuses": dict(sorted(self.statuses.items())),
            "unintended": self.unintended,
            "p50_ms": round(percentile(ordered, 0.50), 1),
            "p90_ms": round(percentile(ordered, 0.90), 1),
            "p99_ms": round(percentile(ordered, 0.99), 1),
            "max_ms": round(ordered[-1], 1) if ordered else math.nan,
            "per_second": round(self.requests / seconds, 1) if seconds else 0.0,
            "mib_per_second": round(self.bytes / MiB / seconds, 2) if seconds else 0.0,
        }


def aggregate(records: list[list[Any]], seconds: float) -> dict[str, dict[str, Any]]:
    stats: dict[str, OpStats] = defaultdict(OpStats)
    for op, status, latency_ms, size, problem, _started in records:
        entry = stats[op]
        entry.requests += 1
        entry.statuses[str(status)] += 1
        entry.latencies.append(latency_ms)
        entry.bytes += size
        if problem:
            entry.unintended += 1
    return {op: stats[op].figures(seconds) for op in sorted(stats)}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def rate_limit_check(records: list[list[Any]]) -> Check:
    """The /health bucket of the forwarded client: some 429s, and never more 200s in any
    minute than the limit allows (counted per started minute of the run, generously)."""
    hits = [r for r in records if r[0] == "health-rate-limited"]
    ok = [r for r in hits if r[1] == 200]
    limited = [r for r in hits if r[1] == 429]
    if not hits:
        return Check("rate limit: 429 seen, 200s within the limit", False, "no requests")
    span = max(r[5] for r in hits) - min(r[5] for r in hits)
    allowed = RATE_LIMIT_PER_MINUTE * (math.floor(span / 60) + 1)
    passed = bool(limited) and len(ok) <= allowed
    return Check(
        "rate limit: 429 seen, 200s within the limit",
        passed,
        f"{len(ok)} x 200 (at most {allowed}), {len(limited)} x 429",
    )


def final_state_checks(
    url: str, token: str, storage: Path, known: dict[str, int], static: dict[str, str]
) -> list[Check]:
    """After the load: every collection within its limits, every live version downloads
    byte-identical to what was recorded and was one of the files sent, the static
    collection holds exactly its seeded versions (refused uploads changed nothing), and the
    storage holds exactly the live objects (no staging files, no orphans).

    ``known``: SHA-256 -> size of every file sent; ``static``: number -> SHA-256 seeded."""
    checks: list[Check] = []
    problems: list[str] = []
    total_versions = 0
    for collection in (*ACTIVE, STATIC):
        status, answer = request_json("GET", versions_url(url, collection), token=token)
        if status != 200:
            problems.append(f"{collection}: listing answered {status}")
            continue
        versions = answer["data"]["versions"]
        total_versions += len(versions)
        if collection == STATIC:
            held = {str(v["versionNumber"]): v["sha256"] for v in versions}
            if held != static:
                problems.append(f"{STATIC} changed: {sorted(held)} instead of {sorted(static)}")
        size = sum(v["filesize"] for v in versions)
        if len(versions) > MAX_BACKUPS or size > MAX_TOTAL:
            problems.append(f"{collection}: {len(versions)} versions, {size} bytes")
        for version in versions:
            number = version["versionNumber"]
            request = urllib.request.Request(  # noqa: S310 - loopback
                f"{versions_url(url, collection)}/{number}",
                headers={"Authorization": f"Bearer {token}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as answer_file:  # noqa: S310
                    body = answer_file.read()
            except urllib.error.HTTPError as exc:
                problems.append(f"{collection} v{number}: download answered {exc.code}")
                continue
            digest = hashlib.sha256(body).hexdigest()
            if digest != version["sha256"] or known.get(digest) != len(body):
                problems.append(f"{collection} v{number}: downloaded bytes differ")
        folder = storage / collection
        on_disk = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        live = sorted(v["filename"] for v in versions)
        if on_disk != live:
            problems.append(f"{collection}: storage holds {on_disk}, live versions are {live}")
    checks.append(
        Check(
            "after the load: limits kept, downloads identical, no orphans",
            not problems,
            "; ".join(problems) if problems else f"{total_versions} live versions verified",
        )
    )
    return checks


# --------------------------------------------------------------------------- main process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (60)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--password-hash-concurrency",
        type=int,
        default=None,
        help="passed to the server (default: the server's own default)",
    )
    parser.add_argument("--burst", type=int, default=32, help="concurrent logins per burst (32)")
    parser.add_argument(
        "--burst-every", type=float, default=15.0, help="seconds between login bursts (15)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the load mix")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if not shutil.which("gpg"):
        print("error: gpg is not installed", file=sys.stderr)
        return 2

    stop_on_signals()

    root = Path(tempfile.mkdtemp(prefix="br-load-"))
    state: dict[str, Any] = {}
    status = 2
    try:
        status = run(args, root, state)
    except BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        server = state.get("server")
        if server is not None:
            print(tail(server.log), file=sys.stderr)
    except Interrupted as exc:
        print(f"\ninterrupted ({exc}); cleaning up", file=sys.stderr)
        status = 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        worker = state.get("worker")
        if worker is not None:
            stop_process(worker, signal.SIGTERM)
        if state.get("server") is not None:
            state["server"].stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return status


def run(args: argparse.Namespace, root: Path, state: dict[str, Any]) -> int:
    from backup_repository.services.passwords import PasswordHasher

    command = "bench/load.py " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "bench/load.py"
    machine = machine_line()
    busy = cpu_busy()
    load_before = os.getloadavg()
    print(machine)
    print(
        f"  load average before: {load_before[0]:.2f} {load_before[1]:.2f} "
        f"{load_before[2]:.2f}; CPU busy before the run: {busy:.0%}"
    )
    if busy > 0.1:
        print("  warning: other work is running on this machine; the figures will be noisy")

    uploads, oversize, static = make_files(root / "files")
    hasher = PasswordHasher(1)
    docs = documents(hasher.hash_sync(USER[1]), hasher.hash_sync(ADMIN[1]))
    hasher.close()
    concurrency = args.password_hash_concurrency or default_hash_concurrency()

    server = Server(root / "server", args.password_hash_concurrency)
    state["server"] = server
    server.start(docs)
    print(f"  server pid {server.pid} on {server.url}, password hash concurrency {concurrency}")

    # Seed: the static collection gets its versions, each active one a first version so
    # that `latest` always exists.
    token = login(server.url, ADMIN)
    static_versions: dict[str, dict[str, Any]] = {}
    for file in static:
        version = upload_file(server.url, token, STATIC, file)
        static_versions[str(version["versionNumber"])] = {
            "path": str(file.path),
            "sha256": file.sha256,
            "size": file.size,
        }
    for collection in ACTIVE:
        upload_file(server.url, token, collection, uploads[0])

    # Idle: after start-up, the seed and one login (whose Argon2 memory is given back).
    time.sleep(1.0)
    monitor = RssMonitor(server.pid)
    idle = monitor.rss()
    hwm_reset = reset_peak_rss(server.pid)
    bound = idle + concurrency * ARGON2_MEMORY + RSS_MARGIN
    print(
        f"  idle RSS {human(idle)}; bound {human(bound)} = idle + {concurrency} x 64 MiB "
        f"(Argon2) + {human(RSS_MARGIN)}"
    )

    config = {
        "url": server.url,
        "duration": args.duration,
        "seed": args.seed,
        "admin": ADMIN,
        "user": USER,
        "active": ACTIVE,
        "static": STATIC,
        "uploads": [{"path": str(f.path), "sha256": f.sha256, "size": f.size} for f in uploads],
        "oversize": {"path": str(oversize.path), "size": oversize.size},
        "static_versions": static_versions,
        "burst": args.burst,
        "burst_every": args.burst_every,
        "forwarded_client": FORWARDED_CLIENT,
        "output": str(root / "worker-output.json"),
    }
    config_path = root / "worker.json"
    config_path.write_text(json.dumps(config))

    server_cpu_before = cpu_seconds(server.pid)
    stat_before = _cpu_totals()
    monitor.start()
    print(f"  load for {args.duration:.0f} s from a second process ...")
    with (root / "worker.log").open("wb") as worker_log:
        worker = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(config_path)],
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        state["worker"] = worker
        try:
            worker.wait(timeout=args.duration + 180)
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"the load generator did not finish:\n{tail(root / 'worker.log')}"
            ) from None
    server_cpu = cpu_seconds(server.pid) - server_cpu_before
    stat_after = _cpu_totals()
    busy_during = (stat_after[0] - stat_before[0]) / max(1, stat_after[1] - stat_before[1])
    load_after = os.getloadavg()
    if worker.returncode != 0:
        monitor.stop()
        raise BenchError(
            f"the load generator failed ({worker.returncode}):\n{tail(root / 'worker.log')}"
        )
    output = json.loads(Path(config["output"]).read_text())
    records: list[list[Any]] = output["records"]
    bursts = [(float(a), float(b)) for a, b in output["bursts"]]

    # Final: once the load is over and the server had two seconds to settle.
    time.sleep(2.0)
    monitor.stop()
    final = monitor.rss()
    hwm = read_status(server.pid).get("VmHWM", 0) if hwm_reset else 0
    peak = max(monitor.peak, hwm)
    alive = server.process is not None and server.process.poll() is None

    seconds = output["ended"] - output["started"]
    ops = aggregate(records, seconds)
    unintended = [r for r in records if r[4]]
    known = {f.sha256: f.size for f in (*uploads, *static)}

    checks = [
        Check(
            "zero unintended answers",
            not unintended,
            f"{len(unintended)} of {len(records)} requests",
        ),
        Check(
            "server RSS within the bound",
            peak <= bound,
            f"peak {human(peak)} <= {human(bound)}",
        ),
        rate_limit_check(records),
        Check(
            "409 seen (two clients per collection)",
            any(r[1] == 409 for r in records if r[0].startswith("upload")),
            f"{sum(1 for r in records if r[1] == 409)} x 409",
        ),
        Check("server alive after the load", alive, "" if alive else tail(server.log)),
    ]
    if alive:
        checks += final_state_checks(
            server.url,
            token,
            server.storage,
            known,
            {number: v["sha256"] for number, v in static_versions.items()},
        )
    server.stop()
    logged = server.log_problems()
    checks.append(
        Check(
            "server logged no errors, stopped cleanly on SIGTERM",
            not logged and server.exit_code == 0,
            f"{len(logged)} error lines, exit {server.exit_code}"
            + (f"; first: {logged[0][:300]}" if logged else ""),
        )
    )

    figures = {
        "command": f".venv/bin/python {command}",
        "machine": machine,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "cpu_busy_before": round(busy, 3),
        "cpu_busy_during": round(busy_during, 3),
        "duration_s": round(seconds, 1),
        "password_hash_concurrency": concurrency,
        "login_bursts": {"count": len(bursts), "size": args.burst},
        "requests": len(records),
        "unintended": len(unintended),
        "unintended_examples": [
            {"op": r[0], "status": r[1], "problem": r[4]} for r in unintended[:20]
        ],
        "operations": ops,
        "rss": {
            "idle": idle,
            "peak": peak,
            "peak_sampled": monitor.peak,
            "vmhwm": hwm,
            "peak_during_login_bursts": monitor.peak_within(bursts),
            "peak_outside_login_bursts": monitor.peak_outside(bursts),
            "final": final,
            "bound": bound,
            "samples": len(monitor.samples),
            "interval_s": monitor.interval,
        },
        "cpu_seconds": {"server": round(server_cpu, 1), "load_generator": output["cpu_seconds"]},
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks],
    }
    figures["passed"] = all(c.passed for c in checks)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["passed"] else 1


def _cpu_totals() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def report(figures: dict[str, Any]) -> None:
    print()
    print(
        f"{figures['requests']} requests in {figures['duration_s']} s; "
        f"load average before {' '.join(map(str, figures['load_average_before']))}, "
        f"after {' '.join(map(str, figures['load_average_after']))}; "
        f"CPU busy during {figures['cpu_busy_during']:.0%}; CPU s: server "
        f"{figures['cpu_seconds']['server']}, load generator "
        f"{figures['cpu_seconds']['load_generator']}"
    )
    print("(MiB/s: request and response bodies moved; latencies of every request)")
    header = f"{'operation':26}{'requests':>9}{'req/s':>8}{'MiB/s':>7}"
    header += f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'bad':>5}  statuses"
    print(header)
    for op, row in figures["operations"].items():
        statuses = " ".join(f"{k}:{v}" for k, v in row["statuses"].items())
        print(
            f"{op:26}{row['requests']:>9}{row['per_second']:>8}{row['mib_per_second']:>7}"
            f"{row['p50_ms']:>9}{row['p90_ms']:>9}{row['p99_ms']:>9}{row['max_ms']:>9}"
            f"{row['unintended']:>5}  {statuses}"
        )
    rss = figures["rss"]
    print(
        f"server RSS: idle {human(rss['idle'])}, peak {human(rss['peak'])} (sampled "
        f"{human(rss['peak_sampled'])}, VmHWM {human(rss['vmhwm'])}), during login bursts "
        f"{human(rss['peak_during_login_bursts'])}, outside "
        f"{human(rss['peak_outside_login_bursts'])}, final {human(rss['final'])}; "
        f"bound {human(rss['bound'])}"
    )
    for example in figures["unintended_examples"]:
        print(f"  unintended: {example['op']} {example['status']}: {example['problem']}")
    print()
    for check in figures["checks"]:
        print(f"{check['name']:58}{'PASS' if check['passed'] else 'FAIL':>6}  {check['detail']}")


# --------------------------------------------------------------------------- load generator


def worker_main(config_path: Path) -> int:
    config = json.loads(config_path.read_text())
    output = asyncio.run(Load(config).run())
    Path(config["output"]).write_text(json.dumps(output))
    return 0


Problem = str | None


def header_check(name: str, value: str) -> Callable[[Any], Problem]:
    def check(response: Any) -> Problem:
        got = response.headers.get(name)
        return None if got == value else f"{name}: {got!r}, expected {value!r}"

    return check


def make_rng(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - picks the load mix, reproducibly


class Load:
    """The load generator: closed-loop clients on one event loop, one record per request
    ``[op, status, latency ms, bytes, problem or None, wall-clock start]``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.url: str = config["url"]
        self.records: list[list[Any]] = []
        self.bursts: list[list[float]] = []
        self.uploads = [
            (Path(f["path"]).read_bytes(), f["sha256"], f["size"]) for f in config["uploads"]
        ]
        self.oversize = Path(config["oversize"]["path"]).read_bytes()
        self.static = {
            number: (Path(v["path"]).read_bytes(), v["sha256"])
            for number, v in config["static_versions"].items()
        }
        self.prefixes = {data[: 4 * KiB] for data, _, _ in self.uploads}
        self.known = {sha: size for _, sha, size in self.uploads}
        self.known.update({sha: len(data) for data, sha in self.static.values()})
        self.latest: dict[str, int] = dict.fromkeys(config["active"], 1)
        self.tokens: dict[str, str] = {}
        self.deadline = 0.0

    def done(self) -> bool:
        return time.monotonic() >= self.deadline

    async def timed(
        self,
        op: str,
        expected: set[int],
        request: Awaitable[Any],
        check: Callable[[Any], Problem] | None = None,
        sent: int = 0,
    ) -> Any:
        """Await one request (an httpx call not awaited yet) and record it with the bytes
        moved (``sent`` plus the response body); returns the response, or None on a
        transport error."""
        import httpx

        started_wall = time.time()
        started = time.perf_counter()
        response = None
        try:
            response = await request
            status: int | str = response.status_code
            size = sent + len(response.content)
            if status not in expected:
                problem: Problem = f"unexpected {status}: {response.text[:200]}"
            else:
                problem = check(response) if check else None
        except httpx.HTTPError as exc:
            status, size, problem = type(exc).__name__, 0, f"{type(exc).__name__}: {exc}"
        latency = (time.perf_counter() - started) * 1000
        self.records.append([op, status, round(latency, 2), size, problem, started_wall])
        return response

    def auth(self, who: str = "user") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def run(self) -> dict[str, Any]:
        import httpx

        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(
            base_url=self.url, limits=limits, timeout=httpx.Timeout(120.0)
        ) as client:
            for who, (name, password) in (("admin", self.config["admin"]),
                                          ("user", self.config["user"])):  # fmt: skip
                answer = await client.post(
                    "/api/stable/auth/login", json={"username": name, "password": password}
                )
                answer.raise_for_status()
                self.tokens[who] = answer.json()["data"]["token"]
            started = time.time()
            self.deadline = time.monotonic() + float(self.config["duration"])
            seed = int(self.config["seed"])
            tasks = []
            for index, collection in enumerate(self.config["active"]):
                for client_no in range(2):
                    rng = make_rng(seed * 1000 + index * 10 + client_no)
                    tasks.append(self.uploader(client, collection, rng))
            tasks.append(self.over_quota(client))
            tasks += [self.downloader(client, make_rng(seed * 2000 + n)) for n in range(4)]
            tasks += [self.lister(client, make_rng(seed * 3000 + n)) for n in range(2)]
            tasks += [self.loginer(client, make_rng(seed * 4000 + n)) for n in range(2)]
            tasks.append(self.login_bursts(client, make_rng(seed * 5000)))
            tasks.append(self.rate_limited(client))
            await asyncio.gather(*tasks)
            ended = time.time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "records": self.records,
            "bursts": self.bursts,
            "started": started,
            "ended": ended,
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        }

    # -- uploads -------------------------------------------------------------------------

    def _upload_check(self, sha: str, size: int, collection: str) -> Callable[[Any], Problem]:
        def check(response: Any) -> Problem:
            if response.status_code != 200:
                return None
            version = response.json()["data"]["version"]
            self.latest[collection] = max(self.latest[collection], version["versionNumber"])
            if version["sha256"] != sha or version["filesize"] != size:
                return f"recorded {version['sha256'][:12]}/{version['filesize']}, sent {size}"
            return None

        return check

    async def uploader(self, client: Any, collection: str, rng: random.Random) -> None:
        path = f"/api/stable/repository/collection/{collection}/version"
        while not self.done():
            data, sha, size = rng.choice(self.uploads)
            check = self._upload_check(sha, size, collection)
            if rng.random() < 0.25:
                await self.timed(
                    "upload-form",
                    {200, 409},
                    client.post(
                        path,
                        headers=self.auth(),
                        files={"file": ("backup.gpg", data, "application/octet-stream")},
                    ),
                    check,
                    sent=size,
                )
            else:
                await self.timed(
                    "upload",
                    {200, 409},
                    client.post(
                        path,
                        headers={**self.auth(), "Content-Type": "application/octet-stream"},
                        content=data,
                    ),
                    check,
                    sent=size,
                )
            await asyncio.sleep(rng.uniform(0, 0.02))

    async def over_quota(self, client: Any) -> None:
        """Once a second an upload larger than any quota allows, to the static collection
        (nobody else uploads there, so the answer is always 413): refused from its
        Content-Length, or (chunked, no length) the moment it passes the limit. The final
        check shows the collection unchanged."""
        path = f"/api/stable/repository/collection/{self.config['static']}/version"
        headers = {**self.auth(), "Content-Type": "application/octet-stream"}
        data = self.oversize

        async def pieces() -> Any:
            for start in range(0, len(data), 64 * KiB):
                yield data[start : start + 64 * KiB]

        chunked = False
        while not self.done():
            if chunked:
                await self.timed(
                    "upload-over-quota-chunked",
                    {413},
                    client.post(path, headers=headers, content=pieces()),
                )
            else:
                await self.timed(
                    "upload-over-quota",
                    {413},
                    client.post(path, headers=headers, content=data),
                )
            chunked = not chunked
            await asyncio.sleep(1.0)

    # -- downloads -----------------------------------------------------------------------

    def _body_check(self, expect_sha: str | None) -> Callable[[Any], Problem]:
        """The body hashes to its ETag and X-Content-SHA256 (and to ``expect_sha``) and is
        one of the files sent; a 404 (where expected) has no body to check."""

        def check(response: Any) -> Problem:
            if response.status_code == 404:
                return None
            digest = hashlib.sha256(response.content).hexdigest()
            header = response.headers.get("x-content-sha256")
            if header != digest or response.headers.get("etag") != f'"{digest}"':
                return f"body {digest[:12]} but headers say {header}"
            if expect_sha is not None and digest != expect_sha:
                return f"body {digest[:12]}, expected {expect_sha[:12]}"
            if self.known.get(digest) != len(response.content):
                return f"body {digest[:12]} is none of the files sent"
            return None

        return check

    def _prefix_check(self) -> Callable[[Any], Problem]:
        """A 206 of the first 4 KiB: the prefix of one of the files sent."""

        def check(response: Any) -> Problem:
            if response.status_code == 404:
                return None
            if response.content not in self.prefixes:
                return f"{len(response.content)} bytes that start none of the files sent"
            return None

        return check

    async def downloader(self, client: Any, rng: random.Random) -> None:
        base = "/api/stable/repository/collection"
        static = self.config["static"]
        while not self.done():
            choice = rng.random()
            if choice < 0.30:
                number = rng.choice(list(self.static))
                ref = number if rng.random() < 0.5 else f"v{number}"
                await self.timed(
                    "download-number",
                    {200},
                    client.get(f"{base}/{static}/version/{ref}", headers=self.auth()),
                    self._body_check(self.static[number][1]),
                )
            elif choice < 0.45:
                number = rng.choice(list(self.static))
                data = self.static[number][0]
                first = rng.randrange(len(data))
                last = rng.randrange(first, len(data))
                headers = {**self.auth(), "Range": f"bytes={first}-{last}"}

                def check_range(response: Any, data: bytes = data, a: int = first,
                                b: int = last) -> Problem:  # fmt: skip
                    if response.content != data[a : b + 1]:
                        return f"range {a}-{b}: wrong bytes ({len(response.content)})"
                    if response.headers.get("content-range") != f"bytes {a}-{b}/{len(data)}":
                        return f"Content-Range {response.headers.get('content-range')}"
                    return None

                await self.timed(
                    "download-range",
                    {206},
                    client.get(f"{base}/{static}/version/{number}", headers=headers),
                    check_range,
                )
            elif choice < 0.70:
                collection = rng.choice(self.config["active"])
                await self.timed(
                    "download-latest",
                    {200},
                    client.get(f"{base}/{collection}/version/latest", headers=self.auth()),
                    self._body_check(None),
                )
            elif choice < 0.85:
                # A version that was live a moment ago in a collection under upload: it may
                # have been rotated away since (404), never half there.
                collection = rng.choice(self.config["active"])
                number = max(1, self.latest[collection] - rng.randrange(4))
                url = f"{base}/{collection}/version/{number}"
                if rng.random() < 0.7:
                    await self.timed(
                        "download-rotating",
                        {200, 404},
                        client.get(url, headers=self.auth()),
                        self._body_check(None),
                    )
                else:
                    # The first 4 KiB (never longer than the smallest file): streamed by
                    # the server rather than sent from the file.
                    await self.timed(
                        "download-rotating-range",
                        {206, 404},
                        client.get(url, headers={**self.auth(), "Range": "bytes=0-4095"}),
                        self._prefix_check(),
                    )
            elif choice < 0.93:
                number = rng.choice(list(self.static))
                etag = f'"{self.static[number][1]}"'
                await self.timed(
                    "download-if-none-match",
                    {304},
                    client.get(
                        f"{base}/{static}/version/{number}",
                        headers={**self.auth(), "If-None-Match": etag},
                    ),
                    header_check("etag", etag),
                )
            else:
                number = rng.choice(list(self.static))
                size = len(self.static[number][0])
                await self.timed(
                    "download-head",
                    {200},
                    client.head(f"{base}/{static}/version/{number}", headers=self.auth()),
                    header_check("content-length", str(size)),
                )

    # -- listings ------------------------------------------------------------------------

    async def lister(self, client: Any, rng: random.Random) -> None:
        collections = [*self.config["active"], self.config["static"]]

        def check_versions(response: Any) -> Problem:
            data = response.json()["data"]
            versions = data["versions"]
            usage = data["usage"]
            size = sum(v["filesize"] for v in versions)
            if len(versions) > usage["maxBackupsCount"] or size > usage["maxCollectionSize"]:
                return f"{len(versions)} versions of {size} bytes exceed the limits"
            numbers = [v["versionNumber"] for v in versions]
            if numbers != sorted(numbers, reverse=True):
                return f"versions not newest first: {numbers}"
            return None

        def check_collections(response: Any) -> Problem:
            names = {c["id"] for c in response.json()["data"]["collections"]}
            return None if names == set(collections) else f"collections {sorted(names)}"

        while not self.done():
            if rng.random() < 0.7:
                collection = rng.choice(collections)
                who = rng.choice(("user", "admin"))
                await self.timed(
                    "list-versions",
                    {200},
                    client.get(
                        f"/api/stable/repository/collection/{collection}/version",
                        headers=self.auth(who),
                    ),
                    check_versions,
                )
            else:
                await self.timed(
                    "list-collections",
                    {200},
                    client.get("/api/stable/repository/collection", headers=self.auth()),
                    check_collections,
                )

    # -- logins --------------------------------------------------------------------------

    def _login(self, client: Any, rng: random.Random) -> tuple[set[int], Awaitable[Any]]:
        """A login with the right password (3 in 4) or a wrong one / an unknown user."""
        name, password = rng.choice((self.config["admin"], self.config["user"]))
        expected = {200}
        if rng.random() < 0.25:
            expected = {401}
            if rng.random() < 0.5:
                password = "wrong-password"  # noqa: S105
            else:
                name = f"nobody-{rng.randrange(10**6)}"
        body = {"username": name, "password": password}
        return expected, client.post("/api/stable/auth/login", json=body)

    async def loginer(self, client: Any, rng: random.Random) -> None:
        while not self.done():
            expected, request = self._login(client, rng)
            response = await self.timed("login", expected, request)
            if response is not None and response.status_code == 200:
                token = response.json()["data"]["token"]
                await self.timed(
                    "whoami",
                    {200},
                    client.get(
                        "/api/stable/auth/whoami", headers={"Authorization": f"Bearer {token}"}
                    ),
                )
            await asyncio.sleep(rng.uniform(0.05, 0.15))

    async def login_bursts(self, client: Any, rng: random.Random) -> None:
        """``burst`` logins at once, early in the run and then every ``burst_every`` s: the
        Argon2 pool makes them queue instead of taking 64 MiB each at the same time."""
        duration = float(self.config["duration"])
        first = min(5.0, duration * 0.2)
        start = self.deadline - duration
        moment = start + first
        while moment < self.deadline:
            await asyncio.sleep(max(0.0, moment - time.monotonic()))
            began = time.time()
            logins = [self._login(client, rng) for _ in range(int(self.config["burst"]))]
            await asyncio.gather(
                *(self.timed("login-burst", expected, request) for expected, request in logins)
            )
            self.bursts.append([began, time.time()])
            moment += float(self.config["burst_every"])

    # -- rate limit ----------------------------------------------------------------------

    async def rate_limited(self, client: Any) -> None:
        """/health 20 times a second for one client named by the trusted proxy (loopback):
        the first ones pass, the rest get 429 with Retry-After."""
        headers = {"X-Forwarded-For": self.config["forwarded_client"]}

        def check(response: Any) -> Problem:
            if response.status_code == 429 and not response.headers.get("retry-after"):
                return "429 without Retry-After"
            return None

        while not self.done():
            await self.timed(
                "health-rate-limited",
                {200, 429},
                client.get("/health", headers=headers),
                check,
            )
            await asyncio.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
