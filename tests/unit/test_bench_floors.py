"""``bench/floors.py``: its table (the minimal app against rest-server and the server's
targets), its exit status and options, the minimal apps of ``bench/floor_apps.py`` over
real loopback HTTP, and the whole script with ``--quick`` when a rest-server binary is
configured (``BR_BENCH_REST_SERVER``, as for ``bench/throughput.py``)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench_modules import BENCH, load_bench

MiB = 1024 * 1024
APP_COMMAND = (sys.executable, str(BENCH / "floor_apps.py"))
SCRIPT_COMMAND = (sys.executable, str(BENCH / "floors.py"))


@pytest.fixture(scope="module")
def floors() -> ModuleType:
    return load_bench("floors")


def a_medium(floors: ModuleType) -> Any:
    medium = floors.MediumResults("tmpfs", "/x", "tmpfs")
    for round_ in range(3):
        medium.add("large download", floors.ASGI, (700.0 + round_) * MiB)
        medium.add("large download", floors.RSGI, 1200.0 * MiB)
        medium.add("large download", floors.REST, 1000.0 * MiB)
        medium.add("large upload", floors.ASGI, 900.0 * MiB)
        medium.add("large upload", floors.RSGI, 1100.0 * MiB)
        medium.add("large upload", floors.STORE, 600.0 * MiB)
        medium.add("large upload", floors.REST, 800.0 * MiB)
        for measure in ("large download cpu", "large upload cpu"):
            for side in (floors.ASGI, floors.RSGI, floors.STORE, floors.REST):
                medium.add(measure, side, 0.5)
        medium.add("small rate", floors.ASGI, 900.0)
        medium.add("small rate", floors.STORE, 180.0)
        medium.add("small rate", floors.REST, 300.0)
        medium.add("small rate", floors.REST_DELETE, 400.0)
        for side in (floors.ASGI, floors.STORE, floors.REST):
            medium.add("small cpu", side, 1.0)
        medium.add("idle rss", floors.ASGI, 36.0 * MiB)
        medium.add("idle rss", floors.FASTAPI, 58.0 * MiB)
        medium.add("idle rss", floors.FASTAPI_SQL, 85.0 * MiB)
        medium.add("idle rss", floors.REST, 10.0 * MiB)
    return medium


def run_of(floors: ModuleType, medium: Any) -> Any:
    run = floors.Run(options={"size": 512 * MiB, "rounds": 3, "small_count": 100})
    run.media.append(medium)
    return run


def row(floors: ModuleType, run: Any, starts: str) -> Any:
    found = [r for r in floors.all_rows(run) if r.measure.startswith(starts)]
    assert len(found) == 1, [r.measure for r in floors.all_rows(run)]
    return found[0]


def test_each_minimal_app_is_held_against_the_servers_target(floors: ModuleType) -> None:
    run = run_of(floors, a_medium(floors))
    pathsend = row(floors, run, "large download 512 MiB: ASGI")
    assert (pathsend.floor, pathsend.reference, pathsend.ratio) == (
        "701.0 MiB/s",
        "1000.0 MiB/s",
        "0.70",
    )
    assert (pathsend.target, pathsend.leaves_room) == (">= 1.0x", False)
    assert pathsend.room == "NO: 0.70x the target"
    assert row(floors, run, "large download 512 MiB: RSGI").leaves_room is True
    store = row(floors, run, "large upload 512 MiB: ASGI, SHA-256")
    assert (store.ratio, store.leaves_room) == ("0.75", False)
    assert row(floors, run, "large upload 512 MiB: ASGI, body").leaves_room is True
    # Like bench/throughput.py, against rest-server's faster rate: 180 / 400 against 0.5x.
    small = row(floors, run, "1 MiB uploads/s: ASGI, SHA-256")
    assert (small.reference, small.ratio, small.target) == ("400.0/s", "0.45", ">= 0.5x")
    assert small.room == "NO: 0.90x the target"
    assert row(floors, run, "1 MiB uploads/s: ASGI, body").room == "yes: 4.50x the target"


def test_idle_rss_is_held_against_the_servers_limit(floors: ModuleType) -> None:
    run = run_of(floors, a_medium(floors))
    bare = row(floors, run, "idle RSS: bare ASGI")
    assert (bare.floor, bare.reference, bare.ratio) == ("36.0 MiB", "10.0 MiB", "3.60")
    assert (bare.target, bare.room, bare.leaves_room) == ("<= 80 MiB", "yes: 44.0 MiB left", True)
    database = row(floors, run, "idle RSS: FastAPI + SQLAlchemy")
    assert (database.room, database.leaves_room) == ("NO: 5.0 MiB over", False)


def test_cpu_rows_are_reported_not_judged(floors: ModuleType) -> None:
    run = run_of(floors, a_medium(floors))
    cpu = [r for r in floors.all_rows(run) if "CPU" in r.measure]
    assert len(cpu) == 2 + 3 + 2  # downloads, uploads, 1 MiB uploads
    assert {(r.target, r.leaves_room) for r in cpu} == {("report", None)}


def test_without_rest_server_there_is_no_ratio_but_memory_still_counts(
    floors: ModuleType,
) -> None:
    medium = a_medium(floors)
    for sides in medium.figures.values():
        sides.pop(floors.REST, None)
        sides.pop(floors.REST_DELETE, None)
    run = run_of(floors, medium)
    upload = row(floors, run, "large upload 512 MiB: ASGI, body")
    assert (upload.reference, upload.ratio, upload.room, upload.leaves_room) == ("-", "-", "", None)
    assert row(floors, run, "idle RSS: bare ASGI").leaves_room is True
    assert floors.status_of(run) == 0


def test_floors_are_reported_and_only_a_failed_run_or_check_exits_2(floors: ModuleType) -> None:
    medium = a_medium(floors)
    run = run_of(floors, medium)
    assert floors.status_of(run) == 0  # a floor below a target is a finding, not a failure
    medium.checks.append(("asgi download = file", False, "abc"))
    assert floors.status_of(run) == 2
    medium.checks.clear()
    run.errors.append("rest-server did not start")
    assert floors.status_of(run) == 2
    assert floors.status_of(floors.Run()) == 2  # nothing measured
    document = floors.as_json(run_of(floors, a_medium(floors)))
    assert document["media"]["tmpfs"]["medians"]["large download"]["asgi"] == 701.0 * MiB
    assert json.loads(json.dumps(document))["status"] == 0


def test_quick_sets_small_sizes_but_keeps_what_is_given(floors: ModuleType) -> None:
    quick = floors.parse_args(["--quick", "--rounds", "3", "--rest-server", "/x"])
    assert (quick.rounds, quick.size, quick.small_count, quick.media) == (
        3,
        16 * MiB,
        20,
        ["tmpfs"],
    )
    full = floors.parse_args(["--media", "tmpfs,disk"])
    assert (full.rounds, full.size, full.small_count, full.media) == (
        5,
        512 * MiB,
        100,
        ["tmpfs", "disk"],
    )
    assert floors.parse_args([]).media == ["tmpfs"]
    assert floors.parse_args(["--measures", "memory"]).measures == ["memory"]
    for wrong in (["--measures", "latency"], ["--rounds", "0"], ["--media", "ssd"]):
        with pytest.raises(SystemExit):
            floors.parse_args(wrong)


# --------------------------------------------------------------------------- the apps


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> http.client.HTTPConnection:
        port = free_port()
        process = subprocess.Popen(
            [*APP_COMMAND, name, "--port", str(port), "--data", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert process.poll() is None, f"{name} exited with {process.returncode}"
                assert time.monotonic() < deadline, f"{name} did not start"
                time.sleep(0.05)
        return http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def request(
    connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    connection.request(method, path, body=body)
    answer = connection.getresponse()
    return answer.status, answer.read()


@pytest.mark.parametrize("name", ["asgi", "rsgi"])
def test_the_bare_apps_send_a_file_and_count_a_body(
    start_app: Any, tmp_path: Path, name: str
) -> None:
    content = os.urandom(3 * MiB + 17)
    (tmp_path / "large.bin").write_bytes(content)
    connection = start_app(name)
    assert request(connection, "GET", "/") == (200, b"ok")
    assert request(connection, "GET", "/large.bin") == (200, content)
    assert request(connection, "GET", "/missing.bin")[0] == 404
    assert request(connection, "POST", "/anything", content) == (200, str(len(content)).encode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.bin"]  # nothing kept


def test_the_store_app_keeps_a_body_only_under_its_sha256(start_app: Any, tmp_path: Path) -> None:
    content = os.urandom(2 * MiB + 5)  # more than one batch for the thread
    name = hashlib.sha256(content).hexdigest()
    connection = start_app("asgi-store")
    assert request(connection, "POST", f"/{name}", content) == (200, name.encode())
    assert (tmp_path / name).read_bytes() == content
    assert request(connection, "GET", f"/{name}") == (200, content)
    wrong = hashlib.sha256(b"other").hexdigest()
    assert request(connection, "POST", f"/{wrong}", content)[0] == 400
    assert request(connection, "POST", "/named-freely", b"x") == (
        200,
        hashlib.sha256(b"x").hexdigest().encode(),
    )
    assert request(connection, "DELETE", f"/{name}")[0] == 200
    assert request(connection, "DELETE", f"/{name}")[0] == 404
    # The refused body left no staging file behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["named-freely"]


# --------------------------------------------------------------------------- the script


def test_the_quick_run_measures_every_row(tmp_path: Path) -> None:
    """The whole script, small sizes (about 15 s): every measure gets its figures. With
    restic's rest-server (``BR_BENCH_REST_SERVER``) every judged row gets its ratio;
    without it the minimal apps are still measured, with no ratio."""
    binary = os.environ.get("BR_BENCH_REST_SERVER")
    out = tmp_path / "floors.json"
    reference = ["--rest-server", binary] if binary else []
    environment = {k: v for k, v in os.environ.items() if k != "BR_BENCH_REST_SERVER"}
    result = subprocess.run(
        [*SCRIPT_COMMAND, "--quick", *reference, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=environment,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(out.read_text())
    rows = document["rows"]
    assert all(c["passed"] for c in document["media"]["tmpfs"]["checks"])
    judged = [r for r in rows if r["target"] != "report"]
    assert all(r["floor"] not in ("", "-") for r in judged)
    if binary:
        assert len(rows) == 4 + 6 + 5 + 3  # downloads, uploads, 1 MiB uploads, idle RSS
        assert all(r["ratio"] != "-" for r in judged)
        assert all(r["leaves_room"] is not None for r in judged)
    else:
        assert "rest-server" in result.stdout  # says how to get the reference
        assert len(rows) == 4 + 6 + 4 + 3
        assert all(r["floor"] not in ("", "-") for r in rows)
        assert all(r["ratio"] == "-" for r in rows)
        # Only the idle RSS rows are judged without a reference (against the absolute limit).
        assert [r["leaves_room"] is not None for r in judged] == [
            "idle RSS" in r["measure"] for r in judged
        ]
