"""The minimal apps of ``bench/floors.py``, each run in a process of its own on granian's
embedded server, configured as the server configures it (``http/serve.py``: HTTP/1 only,
one runtime thread, backlog 1024, websockets off, no access log).

    python bench/floor_apps.py APP --port PORT --data DIR

Apps:

- ``asgi``: a bare ASGI app. ``GET /NAME`` sends the file ``DIR/NAME`` with
  ``http.response.pathsend`` (as the server sends a version); ``POST`` and ``PUT`` read the
  body and throw it away, answering with the number of bytes received.
- ``asgi-store``: the same, but ``POST /NAME`` does what an upload must at least do: every
  byte is hashed (SHA-256) and written to a staging file in a worker thread while the next
  bytes arrive, then the file is fsynced, renamed to ``DIR/NAME`` and its folder fsynced.
  When NAME is a SHA-256 in hex the body must have it (400 otherwise), as rest-server
  checks its blobs. It answers with the SHA-256. ``DELETE /NAME`` removes the file.
- ``rsgi``: granian's own interface: ``GET`` with ``response_file``, ``POST`` read and
  thrown away.
- ``fastapi``: an empty FastAPI app (one route, ``GET /``), for its resident memory.
- ``fastapi-sqlalchemy``: that, plus SQLAlchemy's async engine with an aiosqlite
  connection opened at start-up (the engine's module loaded without the ORM, as the server
  loads it), for its resident memory.

Only what the chosen app needs is imported, so the resident memory of each is what its
parts cost. ``GET /`` answers 200 on every app (the readiness check).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]

APPS = ("asgi", "asgi-store", "rsgi", "fastapi", "fastapi-sqlalchemy")
# The store app hands the bytes to its thread in batches of at least this much: one
# wake-up of the event loop per batch, one batch hashed and written while the next arrives.
BATCH = 1024 * 1024
_HEX = frozenset("0123456789abcdef")
_EXECUTOR: Any = None  # the store app's threads, made with its first upload


def _file_name(path: str) -> str | None:
    """The file a request names (one path segment, no hidden names), else None."""
    name = path.lstrip("/")
    if not name or "/" in name or name.startswith("."):
        return None
    return name


async def _plain(send: Send, status: int, body: bytes = b"") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send, startup: Callable[[], Awaitable[None]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _nothing() -> None:
    return None


async def _drain(receive: Receive) -> int | None:
    """Read a request's body; its size, or None when the client went away."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return size


async def _send_file(send: Send, folder: Path, name: str | None) -> None:
    path = folder / name if name else None
    try:
        size = os.stat(path).st_size if path else -1
    except FileNotFoundError:
        size = -1
    if path is None or size < 0:
        await _plain(send, 404)
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(size).encode()),
            ],
        }
    )
    await send({"type": "http.response.pathsend", "path": str(path)})


def bare_asgi(folder: Path) -> AsgiApp:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, _nothing)
            return
        method, path = scope["method"], scope["path"]
        if path == "/":
            await _plain(send, 200, b"ok")
        elif method == "GET":
            await _send_file(send, folder, _file_name(path))
        elif method in ("POST", "PUT"):
            size = await _drain(receive)
            if size is not None:
                await _plain(send, 200, str(size).encode())
        else:
            await _plain(send, 405)

    return app


class _Staged:
    """A staging file in ``folder``, hashed and written in the thread of an executor:
    opened with the first batch, fsynced, renamed and its folder fsynced after the last."""

    def __init__(self, folder: Path, name: str) -> None:
        import hashlib
        import uuid

        self.folder = folder
        self.target = folder / name
        self.staging = folder / f".staging-{uuid.uuid4().hex}"
        self.digest = hashlib.sha256()
        self.fd = -1

    def write(self, batch: list[bytes], last: bool) -> None:
        if self.fd < 0:
            self.fd = os.open(self.staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        for chunk in batch:
            self.digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.fd, view) :]
        if last:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1

    def commit(self) -> None:
        os.replace(self.staging, self.target)
        directory = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.staging)


async def _store(receive: Receive, folder: Path, name: str) -> tuple[int, bytes]:
    """Receive a body into ``folder/name``: status and answer."""
    from concurrent.futures import ThreadPoolExecutor

    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store")
    loop = asyncio.get_running_loop()
    staged = _Staged(folder, name)
    pending: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    gathered = 0
    try:
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("the client went away")
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            if chunk:
                batch.append(chunk)
                gathered += len(chunk)
            if gathered >= BATCH or not more:
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(_EXECUTOR, staged.write, batch, not more)
                batch, gathered = [], 0
        if pending is not None:
            await pending
        digest = staged.digest.hexdigest()
        if len(name) == 64 and set(name) <= _HEX and name != digest:
            await loop.run_in_executor(_EXECUTOR, staged.discard)
            return 400, b"the body's SHA-256 is not its name"
        await loop.run_in_executor(_EXECUTOR, staged.commit)
        return 200, digest.encode()
    except BaseException:
        if pending is not None:
            await asyncio.wait([pending])
        staged.discard()
        raise


def store_asgi(folder: Path) -> AsgiApp:
    bare = bare_asgi(folder)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/" or scope["method"] == "GET":
            await bare(scope, receive, send)
            return
        name = _file_name(scope["path"])
        if name is None:
            await _plain(send, 404)
        elif scope["method"] == "POST":
            try:
                status, body = await _store(receive, folder, name)
            except ConnectionError:
                return
            await _plain(send, status, body)
        elif scope["method"] == "DELETE":
            try:
                os.unlink(folder / name)
            except FileNotFoundError:
                await _plain(send, 404)
                return
            await _plain(send, 200)
        else:
            await _plain(send, 405)

    return app


class BareRsgi:
    """granian's RSGI interface: ``response_file`` and a body read and thrown away."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        if scope.path == "/":
            protocol.response_str(200, [("content-type", "text/plain")], "ok")
            return
        if scope.method == "GET":
            name = _file_name(scope.path)
            path = self.folder / name if name else None
            if path is None or not path.is_file():
                protocol.response_empty(404, [])
                return
            headers = [("content-type", "application/octet-stream")]
            protocol.response_file(200, headers, str(path))
            return
        if scope.method in ("POST", "PUT"):
            size = 0
            async for chunk in protocol:
                size += len(chunk)
            protocol.response_str(200, [("content-type", "text/plain")], str(size))
            return
        protocol.response_empty(405, [])


def fastapi_app(with_database: Path | None) -> Any:
    from fastapi import FastAPI

    engine: Any = None
    connection: Any = None

    if with_database is not None:
        from collections.abc import AsyncIterator

        @contextlib.asynccontextmanager
        async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
            nonlocal engine, connection
            from sqlalchemy import text

            engine = _async_engine_module().create_async_engine(
                f"sqlite+aiosqlite:///{with_database}"
            )
            connection = await engine.connect()
            await connection.execute(text("SELECT 1"))
            try:
                yield
            finally:
                await connection.close()
                await engine.dispose()

        app = FastAPI(lifespan=lifespan)
    else:
        app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    return app


def _async_engine_module() -> Any:
    """``sqlalchemy.ext.asyncio.engine`` without its package's ``__init__`` (which imports
    the ORM), as ``backup_repository.db.engine`` loads it."""
    import importlib
    import importlib.util

    package = "sqlalchemy.ext.asyncio"
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ImportError(package)
    sys.modules[package] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module(f"{package}.engine")
    finally:
        del sys.modules[package]


def build(app: str, folder: Path) -> tuple[Any, bool]:
    """The app and whether it speaks RSGI."""
    if app == "asgi":
        return bare_asgi(folder), False
    if app == "asgi-store":
        return store_asgi(folder), False
    if app == "rsgi":
        return BareRsgi(folder), True
    if app == "fastapi":
        return fastapi_app(None), False
    if app == "fastapi-sqlalchemy":
        return fastapi_app(folder / "floor.sqlite"), False
    raise ValueError(f"unknown app {app!r}")


async def serve(target: Any, rsgi: bool, port: int) -> None:
    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    server = Server(
        target,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.RSGI if rsgi else Interfaces.ASGI,
        http=HTTPModes.http1,
        log_level=LogLevels.warning,
        log_access=False,
        websockets=False,
        backlog=1024,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)
    await server.serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("app", choices=APPS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the folder of the files")
    args = parser.parse_args(argv)
    target, rsgi = build(args.app, args.data)
    asyncio.run(serve(target, rsgi, args.port))


if __name__ == "__main__":
    main()
