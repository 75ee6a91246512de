"""The parts of ``bench/mixed.py`` that do not need a server: the mix, the percentiles, the
per-thread accounting, and its own HTTP/1.1 client (over real loopback sockets). The load
itself is shown by running the script (bench/README.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType

import pytest

from bench_modules import load_bench


@pytest.fixture(scope="module")
def mixed() -> ModuleType:
    return load_bench("mixed")


def test_the_default_mix_is_the_issues_32_clients(mixed: ModuleType) -> None:
    mix = mixed.parse_mix(mixed.DEFAULT_MIX)
    assert mix == {"whoami": 8, "listing": 8, "download": 8, "upload": 4, "login": 4}
    assert sum(mix.values()) == 32


def test_a_mix_may_leave_roles_out_but_not_name_unknown_ones(mixed: ModuleType) -> None:
    assert mixed.parse_mix("whoami=3, login=1") == {
        "whoami": 3, "listing": 0, "download": 0, "upload": 0, "login": 1,
    }  # fmt: skip
    for wrong in ("whoami=3,health=2", "whoami", "whoami=x", "whoami=0", ""):
        with pytest.raises(mixed.MixError):
            mixed.parse_mix(wrong)


def test_percentiles_are_nearest_rank(mixed: ModuleType) -> None:
    values = [float(v) for v in range(1, 101)]
    assert mixed.percentile(values, 0.50) == 50.0
    assert mixed.percentile(values, 0.99) == 99.0
    assert mixed.percentile([7.0], 0.99) == 7.0


def test_the_cpu_of_threads_that_ended_is_what_the_live_ones_do_not_explain(
    mixed: ModuleType,
) -> None:
    times = mixed.ThreadTimes
    before = {10: times("python", 1.0, 0.5, 0), 11: times("python", 0.0, 0.0, 0)}
    after = {
        10: times("python", 3.0, 1.5, 0),  # the main thread (pid 10)
        11: times("python", 0.5, 2.0, 10),  # a hashing thread, at a raised nice value
        12: times("tokio-rt-worker", 0.25, 0.0, 0),  # started during the run
    }
    report = mixed.thread_report(10, before, after, process_cpu=4.0)
    assert report["event loop (main thread)"] == {"cpu_s": 2.0, "waited_s": 1.0}
    assert report["nice 10 (argon2 pool)"] == {"cpu_s": 0.5, "waited_s": 2.0}
    assert report["tokio-rt-worker"] == {"cpu_s": 0.25, "waited_s": 0.0}
    assert report["threads that ended"]["cpu_s"] == 1.25


async def test_the_load_generators_client_reads_every_body_form(mixed: ModuleType) -> None:
    """Content-Length, chunked and a closed connection, over one keep-alive connection
    that is opened again after the server closed it."""
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: 1\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ]
    requests: list[bytes] = []
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            requests.append(head + await reader.readexactly(length))
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                break
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = mixed.Connection("127.0.0.1", port)
    try:
        assert await client.request("GET", "/a", {"X-One": "1"}) == (
            200, {"content-length": "5"}, b"hello",
        )  # fmt: skip
        status, headers, body = await client.request("POST", "/b", {}, b"payload")
        assert (status, body) == (201, b"abcde")
        assert headers["transfer-encoding"] == "chunked"
        assert (await client.request("GET", "/c", {}))[::2] == (503, b"no")
        assert (await client.request("POST", "/d", {}))[::2] == (200, b"")
    finally:
        client.close()
        server.close()
        await server.wait_closed()
    assert connections == 2
    assert requests[0].startswith(b"GET /a HTTP/1.1\r\n")
    assert b"X-One: 1\r\n" in requests[0]
    assert b"Content-Length" not in requests[0]
    assert requests[1].endswith(b"Content-Length: 7\r\n\r\npayload")
    assert requests[3].endswith(b"Content-Length: 0\r\n\r\n")


async def test_a_broken_connection_is_an_http_error(mixed: ModuleType) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    client = mixed.Connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        with pytest.raises(mixed.HttpError):
            await client.request("GET", "/", {})
        assert client.writer is None  # opened again by the next request
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.skipif(not Path("/proc/mounts").exists(), reason="needs /proc/mounts")
def test_the_storage_file_system_is_the_one_of_the_longest_mount_point(mixed: ModuleType) -> None:
    assert mixed.filesystem(Path("/proc/self/status")) == "proc"
    assert mixed.filesystem(Path("/")) != "proc"
