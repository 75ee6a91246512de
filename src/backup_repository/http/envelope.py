"""The response envelope of every endpoint: ``{"status": bool, "data": {...}, "error": "..."}``.

401 responses additionally carry ``code`` and ``message`` as the reference's JWT middleware
wrote them, because its clients read the login failure from ``message``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import JSONResponse


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def ok(data: Mapping[str, Any], status_code: int = 200) -> JSONResponse:
    return JSONResponse({"status": True, "data": dict(data)}, status_code=status_code)


def error_body(
    status_code: int, message: str, data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"status": False, "error": message, "data": dict(data or {})}
    if status_code == 401:
        body["code"] = 401
        body["message"] = message
    return body


def error(
    status_code: int,
    message: str,
    data: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(status_code, message, data),
        status_code=status_code,
        headers=dict(headers or {}),
    )
