"""Runs the ASGI app on granian in this process (one event loop, one worker: replicas scale
out as processes or pods, and the database is the only shared state).

The plain port speaks HTTP/1.1 only unless ``--http2`` turns on cleartext HTTP/2 (h2c, next
to HTTP/1.1 on the same port). HTTP/1 heads are bounded by granian's read buffer (1 MiB,
``HTTP1_READ_BUFFER``; the app refuses heads over 32 KiB) and its head read timeout (30 s);
granian's HTTP/2 defaults accept header lists of 16 MiB and have no head
timeout, so a few connections holding unfinished header blocks could hold that much memory
each for as long as they stayed open. With ``--http2`` the header list is capped and the
server pings: a client in the middle of a header block cannot answer a ping (nothing may
come between a HEADERS frame and its CONTINUATION frames), so it is dropped when the ping
times out.
"""

from __future__ import annotations

import asyncio
import signal

from fastapi import FastAPI
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings, HTTP2Settings
from granian.log import LogLevels
from granian.server.embed import Server

from backup_repository.logs import granian_log_config
from backup_repository.settings import Listen

# The largest HTTP/2 header list accepted (names and values, plus 32 bytes per field as
# HTTP/2 counts them). The HTTP/2 library also stops a header block after five
# CONTINUATION frames when this is below 4 frames' worth, so an unfinished block holds at
# most about 80 KiB (5 frames of 16 KiB).
HTTP2_MAX_HEADER_LIST = 32 * 1024
# HTTP/2 pings every HTTP2_PING_INTERVAL_MS and drops a connection that has not answered
# within HTTP2_PING_TIMEOUT_S: at most 30 s for an unfinished header block, as HTTP/1's head
# timeout.
HTTP2_PING_INTERVAL_MS = 10_000
HTTP2_PING_TIMEOUT_S = 20
# HTTP/1's read buffer: the most bytes of a request body one read hands to the app, and the
# longest head accepted. Granian's default (408 KiB) cut a 512 MiB upload into 1,300-4,800
# pieces, each a hand-over from granian's thread to the event loop and on to the writer's
# thread; 1 MiB took about a tenth off the server CPU of the upload and a quarter off its
# time (docs/benchmarks.md). A head this long is refused by HeaderLimitMiddleware, but a
# client that never finishes its head holds up to this much for the head read timeout: 16
# such connections raised the RSS by 23 MiB (9 MiB with 408 KiB).
HTTP1_READ_BUFFER = 1024 * 1024


def http1_settings() -> HTTP1Settings:
    return HTTP1Settings(max_buffer_size=HTTP1_READ_BUFFER)


def http2_settings() -> HTTP2Settings:
    return HTTP2Settings(
        max_headers_size=HTTP2_MAX_HEADER_LIST,
        keep_alive_interval=HTTP2_PING_INTERVAL_MS,
        keep_alive_timeout=HTTP2_PING_TIMEOUT_S,
    )


async def serve(
    app: FastAPI, listen: Listen, log_level: str = "info", *, http2: bool = False
) -> None:
    server = Server(
        app,
        address=listen.host,
        port=listen.port,
        interface=Interfaces.ASGI,
        http=HTTPModes.auto if http2 else HTTPModes.http1,
        http1_settings=http1_settings(),
        http2_settings=http2_settings() if http2 else None,
        log_level=LogLevels(log_level),
        # Granian's own lines go through our log pipeline (logs.py), in our format.
        log_dictconfig=granian_log_config(log_level),
        log_access=False,
        websockets=False,
        backlog=1024,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)
    try:
        await server.serve()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
