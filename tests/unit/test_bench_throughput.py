"""The pure parts of ``bench/throughput.py``: the table of targets and its exit status, the
rest-server blob names, the keep-alive client's reconnection count (over real loopback
HTTP), the order of the sides and the quick defaults. The measuring itself is shown by
running the script (bench/README.md)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import pytest

from bench_modules import load_bench

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("throughput")


def medium_meeting_every_target(bench: ModuleType) -> Any:
    medium = bench.MediumResults("tmpfs", "/x", "tmpfs")
    for ours, rest in ((900.0, 800.0), (950.0, 800.0), (1000.0, 800.0)):
        medium.add("large upload", bench.OURS, ours * MiB)
        medium.add("large upload", bench.REST, rest * MiB)
        medium.add("large download", bench.OURS, ours * MiB)
        medium.add("large download", bench.REST, rest * MiB)
        medium.add("parallel", bench.OURS, ours * MiB)
        medium.add("parallel", bench.REST, rest * MiB)
    medium.add("small rate", bench.OURS, 200.0)
    medium.add("small rate", bench.REST, 300.0)
    medium.add("small rate", bench.REST_DELETE, 380.0)
    medium.add("download p50", bench.OURS, 2.5)
    medium.add("download p99", bench.OURS, 9.0)
    medium.rss[bench.OURS] = {
        "idle": 70 * MiB,
        "before": 72 * MiB,
        "peak": 76 * MiB,
        "hwm": 79 * MiB,
        "hwm_reset": 1,
    }
    return medium


def run_of(bench: ModuleType, medium: Any) -> Any:
    run = bench.Run(options={"size": 512 * MiB, "parallel": 8, "parallel_size": 64 * MiB})
    run.media.append(medium)
    return run


def row(bench: ModuleType, run: Any, starts: str) -> Any:
    found = [r for r in bench.all_rows(run) if r.measure.startswith(starts)]
    assert len(found) == 1, [r.measure for r in bench.all_rows(run)]
    return found[0]


def test_every_target_met_exits_0(bench: ModuleType) -> None:
    run = run_of(bench, medium_meeting_every_target(bench))
    assert bench.verdict(run) == 0
    upload = row(bench, run, "large upload")
    assert (upload.ratio, upload.met) == ("1.19", True)  # medians 950 / 800
    # Ours is compared with rest-server's faster rate: 200 / 380.
    small = row(bench, run, "1 MiB uploads/s, sequential, SQLite")
    assert (small.reference, small.ratio, small.met) == ("380.0/s", "0.53", True)
    # VmHWM (reset before the upload) counts above the sampled peak: 79 - 72 MiB.
    assert row(bench, run, "peak RSS above idle").ours == "+7 MiB"


@pytest.mark.parametrize(
    ("change", "missed"),
    [
        (lambda b, m: m.figures["small rate"][b.REST_DELETE].__setitem__(0, 401.0), "1 MiB up"),
        (lambda b, m: m.figures["download p50"][b.OURS].__setitem__(0, 3.01), "1 MiB down"),
        (lambda b, m: m.rss[b.OURS].__setitem__("idle", 81 * MiB), "idle RSS"),
        (lambda b, m: m.rss[b.OURS].__setitem__("hwm", 80 * MiB + 1), "peak RSS"),
        (lambda b, m: m.figures["parallel"].__setitem__(b.OURS, [700.0 * MiB]), "8 x"),
    ],
)
def test_one_missed_target_exits_1(bench: ModuleType, change: Any, missed: str) -> None:
    medium = medium_meeting_every_target(bench)
    change(bench, medium)
    run = run_of(bench, medium)
    assert bench.verdict(run) == 1
    assert [r.measure[: len(missed)] for r in bench.all_rows(run) if r.met is False] == [missed]


def test_without_rest_server_only_our_own_targets_count(bench: ModuleType) -> None:
    medium = medium_meeting_every_target(bench)
    for measure in medium.figures.values():
        measure.pop(bench.REST, None)
        measure.pop(bench.REST_DELETE, None)
    run = run_of(bench, medium)
    assert bench.verdict(run) == 0
    assert row(bench, run, "large upload").met is None
    assert row(bench, run, "large upload").ratio == "-"
    medium.rss[bench.OURS]["idle"] = 100 * MiB
    assert bench.verdict(run) == 1


def test_a_wrong_check_or_an_error_exits_2(bench: ModuleType) -> None:
    medium = medium_meeting_every_target(bench)
    run = run_of(bench, medium)
    medium.checks.append(("server download = file", False, "abc"))
    assert bench.verdict(run) == 2
    medium.checks.clear()
    run.errors.append("rest-server did not start")
    assert bench.verdict(run) == 2
    assert bench.verdict(bench.Run()) == 2  # nothing measured


def test_rest_server_blobs_are_distinct_and_named_by_their_sha256(bench: ModuleType) -> None:
    base = bytes(range(256)) * 4096  # 1 MiB
    maker = bench.BlobMaker(base)
    blobs = [maker.next() for _ in range(3)]
    for name, body in blobs:
        assert len(body) == len(base)
        assert name == hashlib.sha256(body).hexdigest()
    assert len({name for name, _ in blobs}) == 3


def test_every_side_goes_first_in_turn(bench: ModuleType) -> None:
    sides = ["ours", "ours-postgres", "rest"]
    firsts = [bench.rotate(sides, round_)[0] for round_ in range(1, 4)]
    assert firsts == sides
    assert sorted(bench.rotate(sides, 5)) == sorted(sides)


def test_percentile_is_nearest_rank(bench: ModuleType) -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 0.5) == 50.0
    assert bench.percentile(values, 0.99) == 99.0
    assert bench.percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_quick_sets_small_sizes_but_keeps_what_is_given(bench: ModuleType) -> None:
    quick = bench.parse_args(["--quick", "--rounds", "3", "--rest-server", "/x"])
    assert (quick.rounds, quick.size, quick.rss_size) == (3, 16 * MiB, 64 * MiB)
    assert quick.media == ["tmpfs"]
    assert bench.parse_args(["--quick", "--media", "disk,tmpfs"]).media == ["disk", "tmpfs"]
    full = bench.parse_args(["--media", "disk"])
    assert (full.rounds, full.size, full.rss_size, full.media) == (
        5,
        512 * MiB,
        1024 * MiB,
        ["disk"],
    )
    assert bench.parse_args([]).media == ["tmpfs", "disk"]
    assert bench.parse_args([]).measures == list(bench.MEASURES)
    assert bench.parse_args(["--measures", "small,download"]).measures == ["small", "download"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--measures", "small,latency"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--media", "ssd"])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    close_every = 0  # close the connection after every n-th answer (0: never)
    served = 0

    def do_GET(self) -> None:
        type(self).served += 1
        close = bool(self.close_every) and self.served % self.close_every == 0
        self.send_response(200)
        self.send_header("Content-Length", "2")
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"ok")
        self.close_connection = close

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_keep_alive_counts_the_connections_a_server_closed(
    bench: ModuleType, http_server: tuple[str, type[_Handler]]
) -> None:
    url, handler = http_server
    client = bench.KeepAlive(url)
    try:
        for _ in range(4):
            status, body, seconds = client.request("GET", "/")
            assert (status, body) == (200, b"ok")
            assert seconds > 0
        assert client.reconnects == 0
        handler.close_every = 2  # answers 6 and 8 close: requests 7 and 9 reconnect
        for _ in range(5):
            client.request("GET", "/")
        assert client.reconnects == 2
    finally:
        client.close()
