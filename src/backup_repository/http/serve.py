"""Runs the ASGI app on granian in this process (one event loop, one worker: replicas scale
out as processes or pods, and the database is the only shared state)."""

from __future__ import annotations

import asyncio
import signal

from fastapi import FastAPI
from granian.constants import Interfaces
from granian.log import LogLevels
from granian.server.embed import Server

from backup_repository.logs import granian_log_config
from backup_repository.settings import Listen


async def serve(app: FastAPI, listen: Listen, log_level: str = "info") -> None:
    server = Server(
        app,
        address=listen.host,
        port=listen.port,
        interface=Interfaces.ASGI,
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
