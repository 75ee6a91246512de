"""What the HTTP stack alone can do, side by side with restic's rest-server.

Some targets of ``bench/throughput.py`` may be out of reach of the server's stack (granian's
ASGI interface, Python's hashlib, FastAPI, SQLAlchemy) whatever the server's own code does.
This script runs minimal apps on granian (``bench/floor_apps.py``, configured as the server
configures granian) and restic's rest-server on loopback, in interleaved rounds (the side
that goes first rotates; the median of the rounds counts), on tmpfs (and on disk with
``--media``):

1. a large download (curl to /dev/null): a bare ASGI app answering with
   ``http.response.pathsend`` (as the server does), the same file through granian's RSGI
   ``response_file``, and rest-server's GET of a blob of the same size;
2. a large upload (``curl -T``): bare ASGI and RSGI apps that only read the body, an ASGI
   app that hashes (SHA-256) and writes it to a staging file in a thread, then fsyncs and
   renames it (what an upload must at least do), and rest-server's upload (it hashes,
   writes, fsyncs, renames);
3. sequential 1 MiB uploads over one keep-alive connection: the two ASGI apps and
   rest-server, requests per second and the server's CPU time per request;
4. idle RSS after start-up and one request: a bare ASGI app, an empty FastAPI app, that
   app with SQLAlchemy's async engine connected to SQLite through aiosqlite, and
   rest-server.

For each measure it prints the minimal app's figure, rest-server's, their ratio, the target
the server has in ``bench/throughput.py`` and whether the minimal app leaves room for it:
a minimal app below a target shows that the target is out of reach on this stack.

    .venv/bin/python bench/floors.py --rest-server PATH [--media tmpfs,disk] [--rounds 5]
    .venv/bin/python bench/floors.py --quick      # small sizes, 2 rounds, tmpfs: a check

Exit status 0 when the run was done (the floors are reported, not judged), 2 when it could
not be done or a check failed. Needs ``curl``; uses the standard library and the project's
dependencies. Everything it starts or writes is removed on exit, also on Ctrl-C. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, throughput.py

from throughput import (
    BUILD_HINT,
    COLLECTION,
    IDLE_RSS_LIMIT,
    LARGE_TARGET,
    REST_SERVER_ENV,
    SMALL_COLLECTION,
    SMALL_UPLOAD_TARGET,
    BenchError,
    BlobMaker,
    Interrupted,
    KeepAlive,
    MediumResults,
    RestServer,
    Sequential,
    TestFile,
    Transfer,
    _mibs,
    _ms,
    _rate,
    _seconds,
    cpu_seconds,
    curl,
    curl_sha256,
    descendants,
    disk_folder,
    drop_copy,
    filesystem_type,
    free_port,
    human,
    machine_line,
    machine_load,
    measures_parser,
    parse_media,
    parse_size,
    read_status,
    rest_server_version,
    rotate,
    settle,
    small_uploads_rest,
    started,
    stop_on_signals,
    stop_process,
    tail,
    upload_rest,
    wait_http,
)

MiB = 1024 * 1024
SMALL_SIZE = MiB
APPS_SCRIPT = Path(__file__).resolve().parent / "floor_apps.py"
IDLE_SETTLE_S = 1.0  # after start-up and the request, before the RSS is read

# The sides. The first three are the long-running minimal apps of the transfers.
ASGI = "asgi"  # bare ASGI: pathsend, a body read and thrown away
STORE = "asgi-store"  # ASGI: SHA-256, staging file written in a thread, fsync, rename
RSGI = "rsgi"  # granian's RSGI: response_file, a body read and thrown away
FASTAPI = "fastapi"  # an empty FastAPI app (memory only)
FASTAPI_SQL = "fastapi-sqlalchemy"  # that plus SQLAlchemy's async engine on aiosqlite
REST = "rest"
REST_DELETE = "rest+delete"

# measure -> (label, the sides in table order)
UPLOAD_SIDES = (ASGI, RSGI, STORE)
DOWNLOAD_SIDES = (ASGI, RSGI)
SMALL_SIDES = (ASGI, STORE)
MEMORY_SIDES = (ASGI, FASTAPI, FASTAPI_SQL)
LABELS = {
    ("large download", ASGI): "ASGI, http.response.pathsend",
    ("large download", RSGI): "RSGI, response_file",
    ("large upload", ASGI): "ASGI, body read only",
    ("large upload", RSGI): "RSGI, body read only",
    ("large upload", STORE): "ASGI, SHA-256+write+fsync+rename",
    ("small rate", ASGI): "ASGI, body read only",
    ("small rate", STORE): "ASGI, SHA-256+write+fsync+rename",
    ("idle rss", ASGI): "bare ASGI app",
    ("idle rss", FASTAPI): "empty FastAPI app",
    ("idle rss", FASTAPI_SQL): "FastAPI + SQLAlchemy async engine on aiosqlite",
}


# --------------------------------------------------------------------------- processes


class App:
    """One minimal app of ``floor_apps.py`` in a process of its own."""

    def __init__(self, name: str, data: Path, log: Path) -> None:
        self.name = name
        self.data = data
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            str(APPS_SCRIPT),
            self.name,
            "--port",
            str(self.port),
            "--data",
            str(self.data),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BR_")}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            wait_http(self.url + "/", self.process, self.log)
        except BaseException:
            stop_process(self.process, signal.SIGTERM)
            raise

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM)


def tree_rss(pid: int) -> int:
    return sum(read_status(each).get("VmRSS", 0) for each in descendants(pid))


# --------------------------------------------------------------------------- transfers


def random_file(path: Path, size: int) -> TestFile:
    """``size`` random bytes (the minimal apps need no OpenPGP message; rest-server names a
    blob by its SHA-256)."""
    digest = hashlib.sha256()
    with open("/dev/urandom", "rb") as urandom, path.open("wb") as out:
        left = size
        while left:
            block = urandom.read(min(left, 4 * MiB))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return TestFile(path, size, size, digest.hexdigest())


def upload_app(app: App, source: TestFile, answer: Path) -> tuple[Transfer, float]:
    """POST the file to ``/SHA256`` of an app; its server CPU seconds. The bare apps must
    answer with the size received, the store app with the SHA-256."""
    cpu_before = cpu_seconds(app.pid)
    transfer = curl(
        ["-X", "POST", "-T", str(source.path), f"{app.url}/{source.sha256}"],
        upload=True,
        response=answer,
    )
    cpu = cpu_seconds(app.pid) - cpu_before
    expected = source.sha256 if app.name == STORE else str(source.size)
    if transfer.status != 200 or transfer.body.decode(errors="replace") != expected:
        raise BenchError(
            f"upload to {app.name} answered {transfer.status} {transfer.body[:200]!r}, "
            f"not {expected}\n{tail(app.log)}"
        )
    return transfer, cpu


def download(pid: int, url: str) -> tuple[Transfer, float]:
    cpu_before = cpu_seconds(pid)
    transfer = curl([url], upload=False)
    cpu = cpu_seconds(pid) - cpu_before
    if transfer.status != 200:
        raise BenchError(f"GET {url} answered {transfer.status}")
    return transfer, cpu


def small_uploads_app(app: App, blobs: BlobMaker, count: int) -> Sequential:
    """POST ``count`` distinct 1 MiB bodies, each to ``/its SHA-256``, over one keep-alive
    connection; what the store app kept is deleted afterwards (untimed)."""
    client = KeepAlive(app.url)
    seconds: list[float] = []
    names: list[str] = []
    try:
        client.request("GET", "/")  # connect outside the timing
        cpu_before = cpu_seconds(app.pid)
        for _ in range(count):
            name, body = blobs.next()
            status, answer, took = client.request("POST", f"/{name}", body)
            if status != 200:
                raise BenchError(f"{app.name} answered {status}: {answer[:200]!r}")
            seconds.append(took)
            names.append(name)
        cpu = cpu_seconds(app.pid) - cpu_before
        if app.name == STORE:
            for name in names:
                status, answer, _ = client.request("DELETE", f"/{name}")
                if status != 200:
                    raise BenchError(f"{app.name} DELETE answered {status}: {answer[:200]!r}")
    finally:
        client.close()
    if client.reconnects:
        raise BenchError(f"{app.name} closed the keep-alive connection {client.reconnects}x")
    return Sequential(seconds, cpu)


# --------------------------------------------------------------------------- the rounds


@dataclass
class Run:
    machine: str = ""
    load_before: str = ""
    load_after: str = ""
    rest_server: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    media: list[MediumResults] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def idle_rss(
    name: str, root: Path, rest_binary: Path | None, processes: list[Any], serial: int
) -> int:
    """A fresh process of ``name``: its tree's RSS after start-up and one request."""
    folder = root / f"idle-{serial}-{name}"
    folder.mkdir()
    process: App | RestServer
    if name == REST:
        assert rest_binary is not None
        process = RestServer(rest_binary, folder)
        start_args: tuple[Any, ...] = ([COLLECTION],)  # its one request creates a repository
    else:
        process = App(name, folder / "data", folder / "app.log")  # waits for a GET /
        start_args = ()
    with started(processes, process, *start_args):
        time.sleep(IDLE_SETTLE_S)
        rss = tree_rss(process.pid)
    shutil.rmtree(folder, ignore_errors=True)
    return rss


def measure_medium(
    args: argparse.Namespace,
    name: str,
    root: Path,
    rest_binary: Path | None,
    processes: list[Any],
    run: Run,
) -> None:
    medium = MediumResults(name, str(root), filesystem_type(root))
    run.media.append(medium)
    print(f"\n== {name}: {root} ({medium.fstype})")
    if name == "disk" and medium.fstype in ("tmpfs", "ramfs"):
        print(f"  warning: {root} is on {medium.fstype}, not a disk (see --disk-dir)")
    data = root / "apps"
    data.mkdir()
    measures = args.measures
    large: TestFile | None = None
    if "large" in measures:
        print(f"  writing {human(args.size)} of random bytes ...", flush=True)
        large = random_file(data / "large.bin", args.size)
    blobs = BlobMaker(os.urandom(SMALL_SIZE))
    answer = root / "answer.txt"
    stack = contextlib.ExitStack()
    with stack:
        apps: dict[str, App] = {}
        if "large" in measures or "small" in measures:
            for side in (ASGI, STORE, RSGI):
                app = App(side, data, root / f"{side}.log")
                stack.enter_context(started(processes, app))
                apps[side] = app
            print("  apps: " + ", ".join(f"{s} pid {a.pid}" for s, a in apps.items()))
        rest: RestServer | None = None
        if rest_binary is not None and ("large" in measures or "small" in measures):
            rest = RestServer(rest_binary, root / "rest-server")
            stack.enter_context(started(processes, rest, [COLLECTION, SMALL_COLLECTION]))
            print(f"  rest-server pid {rest.pid} on {rest.url}")

        # Warm-up (untimed): the first requests of a process pay for lazy imports and
        # thread pools.
        if "small" in measures:
            for side in SMALL_SIDES:
                small_uploads_app(apps[side], blobs, 2)
            if rest is not None:
                small_uploads_rest(rest, blobs, 2, delete=True)

        leftovers: list[Callable[[], None]] = []
        serial = 0
        for round_ in range(1, args.rounds + 1):
            for clean in leftovers:
                clean()
            leftovers = []
            line: list[str] = []
            if large is not None:
                sides = [*UPLOAD_SIDES, *([REST] if rest else [])]
                for side in rotate(sides, round_):
                    settle()
                    if side == REST and rest is not None:
                        rest_up = upload_rest(rest, large)
                        transfer, cpu = rest_up.transfer, rest_up.cpu
                        leftovers.append(partial(rest.delete, COLLECTION, large.sha256))
                    else:
                        transfer, cpu = upload_app(apps[side], large, answer)
                        if side == STORE:
                            leftovers.append(partial(drop_copy, data / large.sha256))
                    medium.add("large upload", side, transfer.speed)
                    medium.add("large upload cpu", side, cpu)
                sides = [*DOWNLOAD_SIDES, *([REST] if rest else [])]
                for side in rotate(sides, round_ + 1):
                    if side == REST and rest is not None:
                        transfer, cpu = download(rest.pid, rest.blob_url(COLLECTION, large.sha256))
                    else:
                        transfer, cpu = download(apps[side].pid, f"{apps[side].url}/large.bin")
                    medium.add("large download", side, transfer.speed)
                    medium.add("large download cpu", side, cpu)
                line.append(
                    "up MiB/s "
                    + ", ".join(
                        f"{s} {v[-1] / MiB:.0f}" for s, v in medium.figures["large upload"].items()
                    )
                )
                line.append(
                    "down MiB/s "
                    + ", ".join(
                        f"{s} {v[-1] / MiB:.0f}"
                        for s, v in medium.figures["large download"].items()
                    )
                )
            if "small" in measures:
                sides = [*SMALL_SIDES, *([REST, REST_DELETE] if rest else [])]
                for side in rotate(sides, round_):
                    if side in (REST, REST_DELETE):
                        assert rest is not None
                        result = small_uploads_rest(
                            rest, blobs, args.small_count, delete=side == REST_DELETE
                        )
                    else:
                        result = small_uploads_app(apps[side], blobs, args.small_count)
                    medium.add("small rate", side, result.rate)
                    medium.add("small cpu", side, result.cpu_ms)
                line.append(
                    "1 MiB/s "
                    + ", ".join(f"{s} {v[-1]:.0f}" for s, v in medium.figures["small rate"].items())
                )
            if "memory" in measures:
                sides = [*MEMORY_SIDES, *([REST] if rest_binary else [])]
                for side in rotate(sides, round_):
                    serial += 1
                    rss = idle_rss(side, root, rest_binary, processes, serial)
                    medium.add("idle rss", side, rss)
                line.append(
                    "idle MiB "
                    + ", ".join(
                        f"{s} {v[-1] / MiB:.1f}" for s, v in medium.figures["idle rss"].items()
                    )
                )
            print(f"  round {round_}/{args.rounds}: " + "; ".join(line))

        if large is not None:
            # Correctness (untimed): what each side sends is the file.
            for side in DOWNLOAD_SIDES:
                got, size = curl_sha256([f"{apps[side].url}/large.bin"])
                ok = got == large.sha256 and size == large.size
                medium.checks.append((f"{side} download = file", ok, got[:16]))
            if rest is not None:
                got, size = curl_sha256([rest.blob_url(COLLECTION, large.sha256)])
                ok = got == large.sha256 and size == large.size
                medium.checks.append(("rest-server download = file", ok, got[:16]))
        for clean in leftovers:
            clean()


# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    medium: str
    measure: str
    floor: str
    reference: str
    ratio: str
    target: str
    room: str  # whether the minimal app leaves room for the server's target
    leaves_room: bool | None


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.1f} MiB"


def _ratio(floor: float | None, reference: float | None) -> float | None:
    return floor / reference if floor is not None and reference else None


def _ratio_row(
    medium: MediumResults,
    measure: str,
    floor: float | None,
    reference: float | None,
    shown: Callable[[float | None], str],
    target: float | None = None,
) -> Row:
    """A row of the minimal app against rest-server: against the server's ``target`` (does
    the minimal app leave room for it?), or reported only when there is none."""
    ratio = _ratio(floor, reference)
    if ratio is None or target is None:
        room, leaves = "", None
    else:
        leaves = ratio >= target
        room = f"{'yes' if leaves else 'NO'}: {ratio / target:.2f}x the target"
    return Row(
        medium.name,
        measure,
        shown(floor),
        shown(reference),
        "-" if ratio is None else f"{ratio:.2f}",
        "report" if target is None else f">= {target:.1f}x",
        room,
        leaves,
    )


def rows_of(medium: MediumResults, options: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    size = human(options.get("size", 0))
    for measure, sides in (("large download", DOWNLOAD_SIDES), ("large upload", UPLOAD_SIDES)):
        if measure not in medium.figures:
            continue
        reference = medium.median(measure, REST)
        for side in sides:
            rows.append(
                _ratio_row(
                    medium,
                    f"{measure} {size}: {LABELS[measure, side]}",
                    medium.median(measure, side),
                    reference,
                    _mibs,
                    LARGE_TARGET,
                )
            )
        cpu = f"{measure} cpu"
        for side in sides:
            rows.append(
                _ratio_row(
                    medium,
                    f"  server CPU per {measure.split()[1]}, {side}",
                    medium.median(cpu, side),
                    medium.median(cpu, REST),
                    _seconds,
                )
            )
    if "small rate" in medium.figures:
        candidates = [
            value
            for value in (
                medium.median("small rate", REST),
                medium.median("small rate", REST_DELETE),
            )
            if value is not None
        ]
        fastest = max(candidates) if candidates else None
        for side in SMALL_SIDES:
            rows.append(
                _ratio_row(
                    medium,
                    f"1 MiB uploads/s: {LABELS['small rate', side]}",
                    medium.median("small rate", side),
                    fastest,
                    _rate,
                    SMALL_UPLOAD_TARGET,
                )
            )
        for side in SMALL_SIDES:
            rows.append(
                _ratio_row(
                    medium,
                    f"  server CPU per 1 MiB upload, {side}",
                    medium.median("small cpu", side),
                    medium.median("small cpu", REST),
                    _ms,
                )
            )
        if candidates:
            rows.append(
                Row(
                    medium.name,
                    "  rest-server: POST only | POST+DELETE",
                    "",
                    f"{_rate(medium.median('small rate', REST))} | "
                    f"{_rate(medium.median('small rate', REST_DELETE))}",
                    "",
                    "report",
                    "",
                    None,
                )
            )
    if "idle rss" in medium.figures:
        reference = medium.median("idle rss", REST)
        for side in MEMORY_SIDES:
            floor = medium.median("idle rss", side)
            leaves = None if floor is None else floor <= IDLE_RSS_LIMIT
            room = ""
            if floor is not None:
                left = IDLE_RSS_LIMIT - floor
                room = f"yes: {_mib(left)} left" if left >= 0 else f"NO: {_mib(-left)} over"
            ratio = _ratio(floor, reference)
            rows.append(
                Row(
                    medium.name,
                    f"idle RSS: {LABELS['idle rss', side]}",
                    _mib(floor),
                    _mib(reference),
                    "-" if ratio is None else f"{ratio:.2f}",
                    f"<= {human(IDLE_RSS_LIMIT)}",
                    room,
                    leaves,
                )
            )
    return rows


def all_rows(run: Run) -> list[Row]:
    return [row for medium in run.media for row in rows_of(medium, run.options)]


def status_of(run: Run) -> int:
    """0: the run was done (floors are reported, not judged); 2: it failed or a check is
    wrong."""
    broken = bool(run.errors) or any(
        not passed for medium in run.media for _, passed, _ in medium.checks
    )
    return 2 if broken or not run.media else 0


def report(run: Run) -> int:
    print()
    print(run.machine)
    print(f"load before the run: {run.load_before}")
    print(f"load after the run: {run.load_after}")
    print(f"reference: {run.rest_server or 'none (no ratios)'}")
    print(
        f"medians of {run.options.get('rounds')} interleaved rounds; "
        f"{run.options.get('small_count')} sequential uploads per round; ratio = minimal "
        "app / rest-server; target = the server's in bench/throughput.py"
    )
    widths = (6, 56, 13, 13, 5, 10)
    head = ("medium", "measure", "minimal app", "rest-server", "ratio", "target")
    print()
    print("  ".join(f"{h:<{w}}" for h, w in zip(head, widths, strict=True)) + "  room for it")
    for row in all_rows(run):
        cells = (row.medium, row.measure, row.floor, row.reference, row.ratio, row.target)
        line = "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True))
        print(f"{line}  {row.room}".rstrip())
    for medium in run.media:
        for name, passed, detail in medium.checks:
            print(f"{medium.name:<6}  check: {name:<40} {'OK' if passed else 'WRONG'}  {detail}")
    for error in run.errors:
        print(f"error: {error}")
    status = status_of(run)
    print("done" if status == 0 else "the run could not be completed")
    return status


def as_json(run: Run) -> dict[str, Any]:
    return {
        "machine": run.machine,
        "load_before": run.load_before,
        "load_after": run.load_after,
        "rest_server": run.rest_server,
        "options": run.options,
        "media": {
            medium.name: {
                "path": medium.path,
                "filesystem": medium.fstype,
                "figures": medium.figures,
                "medians": {
                    measure: {side: statistics.median(values) for side, values in sides.items()}
                    for measure, sides in medium.figures.items()
                },
                "checks": [{"name": n, "passed": p, "detail": d} for n, p, d in medium.checks],
            }
            for medium in run.media
        },
        "rows": [row.__dict__ for row in all_rows(run)],
        "errors": run.errors,
        "status": status_of(run),
    }


# --------------------------------------------------------------------------- options

MEASURES = ("large", "small", "memory")
parse_measures = measures_parser(MEASURES)
QUICK: dict[str, Any] = {"media": ["tmpfs"], "rounds": 2, "size": 16 * MiB, "small_count": 20}
FULL: dict[str, Any] = {"media": ["tmpfs"], "rounds": 5, "size": 512 * MiB, "small_count": 100}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--rest-server",
        type=Path,
        default=os.environ.get(REST_SERVER_ENV) or None,
        help=f"restic's rest-server binary, the reference (default: ${REST_SERVER_ENV}); "
        "without it the minimal apps are measured alone",
    )
    parser.add_argument(
        "--media",
        type=parse_media,
        help="where the files are: tmpfs (/dev/shm), disk (a temporary folder, see "
        "--disk-dir), or both in this order (default tmpfs)",
    )
    parser.add_argument("--disk-dir", help="the folder on disk for --media disk (default /var/tmp)")
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds; the median counts (default 5, --quick 2)"
    )
    parser.add_argument(
        "--size", type=parse_size, help="the large upload and download (default 512M)"
    )
    parser.add_argument(
        "--small-count",
        type=int,
        help="sequential 1 MiB uploads per round and side (default 100, --quick 20)",
    )
    parser.add_argument(
        "--measures",
        type=parse_measures,
        default=list(MEASURES),
        help=f"which measures to run, comma-separated (default all: {','.join(MEASURES)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="16 MiB, 20 uploads, 2 rounds, tmpfs (under a minute): checks that the script works",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folders (logs) and say where"
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
    if args.small_count < 1:
        parser.error("--small-count must be at least 1")
    if args.size < 1:
        parser.error("--size must be at least 1 byte")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("curl"):
        print("error: curl is not installed", file=sys.stderr)
        return 2
    stop_on_signals()
    run = Run(
        options={
            key: getattr(args, key)
            for key in ("rounds", "size", "small_count", "media", "measures", "quick")
        }
    )
    folders: list[Path] = []
    processes: list[Any] = []
    status = 2
    try:
        run.machine = machine_line()
        run.load_before, busy = machine_load()
        print(run.machine)
        print(f"load before the run: {run.load_before}")
        if busy > 0.1:
            print("warning: other work is running on this machine; the figures will be noisy")
        rest_binary: Path | None = None
        if args.rest_server is None:
            print(BUILD_HINT.format(env=REST_SERVER_ENV).replace("the server is", "the apps are"))
        else:
            rest_binary = Path(args.rest_server).resolve()
            run.rest_server = f"{rest_server_version(rest_binary)} ({rest_binary.name})"
            print(f"reference: {run.rest_server}")
        for name in args.media:
            if name == "tmpfs":
                if not os.path.isdir("/dev/shm"):
                    raise BenchError("/dev/shm does not exist (use --media disk)")
                root = Path(tempfile.mkdtemp(prefix="br-floors-", dir="/dev/shm"))
            else:
                root = Path(tempfile.mkdtemp(prefix="br-floors-", dir=disk_folder(args)))
            folders.append(root)
            try:
                measure_medium(args, name, root, rest_binary, processes, run)
            except BenchError as exc:  # the other media are still measured
                run.errors.append(f"{name}: {exc}")
                print(f"\nerror on {name}: {exc}", file=sys.stderr)
        run.load_after, _ = machine_load()
        status = report(run)
    except BenchError as exc:
        run.errors.append(str(exc))
        print(f"\nerror: {exc}", file=sys.stderr)
        status = report(run)
    except Interrupted as exc:
        print(f"\ninterrupted ({exc}); cleaning up", file=sys.stderr)
        status = 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for process in list(processes):
            process.stop()
        for folder in folders:
            if args.keep:
                print(f"kept {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
    if args.json and status in (0, 2):
        args.json.write_text(json.dumps(as_json(run), indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
