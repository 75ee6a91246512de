"""The granian server as serve() configures it: HTTP/1's read buffer, which bounds both the
pieces a request body reaches the app in and the longest head accepted."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from backup_repository.http import serve as serve_module
from backup_repository.http.middleware import MAX_HEADER_BYTES
from backup_repository.settings import Listen


class RecordedServer:
    """Takes granian's Server arguments and serves nothing."""

    made: list[dict[str, Any]] = []

    def __init__(self, target: object, **kwargs: Any) -> None:
        RecordedServer.made.append(kwargs)

    async def serve(self) -> None:
        return None

    def stop(self) -> None:
        return None


@pytest.mark.parametrize("http2", [False, True])
async def test_a_request_body_is_read_in_pieces_of_up_to_one_mib(
    monkeypatch: pytest.MonkeyPatch, http2: bool
) -> None:
    # Before, granian's default (408 KiB): a 512 MiB upload reached the app in 1,300 to
    # 4,800 pieces, each a hand-over between granian's thread and the event loop.
    RecordedServer.made.clear()
    monkeypatch.setattr(serve_module, "Server", RecordedServer)
    await serve_module.serve(FastAPI(), Listen(host="127.0.0.1", port=0), "warning", http2=http2)
    (kwargs,) = RecordedServer.made
    settings = kwargs["http1_settings"]
    assert settings.max_buffer_size == 1024 * 1024
    # The rest as granian's defaults: the head's read timeout, keep-alive.
    assert settings.header_read_timeout == 30_000
    assert settings.keep_alive is True
    # A head the buffer takes is still refused by the app's own limit, far below it.
    assert settings.max_buffer_size > MAX_HEADER_BYTES
