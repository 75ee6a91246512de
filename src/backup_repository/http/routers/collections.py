"""Collections and versions (docs/api.md, docs/collections.md): upload, download, listings,
health."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from backup_repository.domain.errors import (
    DependencyUnavailable,
    DomainError,
    InvalidInput,
    RequestTimeout,
)
from backup_repository.http.bodies import form_decoder
from backup_repository.http.deps import Auth, ServicesDep, UploadAuth
from backup_repository.http.envelope import error, ok, rfc3339
from backup_repository.http.openapi import responses as openapi
from backup_repository.services.backups import (
    LATEST_ATTEMPTS,
    STORAGE_UNAVAILABLE,
    Download,
    Usage,
)
from backup_repository.services.ports import VersionRecord

router = APIRouter(tags=["collections"])

CollectionId = Annotated[str, Path(max_length=255, examples=["db-prod"])]
VersionRef = Annotated[
    str, Path(max_length=32, description="a number, vN or latest", examples=["latest", "v1"])
]
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_LENGTH = re.compile(r"^\d{1,19}$")

UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The encrypted file: a raw body (any content type, chunked or not), "
        "or a form with the file in the field `file`.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The whole file", "content": _BINARY},
    206: {"description": "The requested range (Content-Range)", "content": _BINARY},
    304: {"description": "If-None-Match matched the ETag"},
    **openapi.errors(403, 404, 416),
}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    **openapi.ok(openapi.HealthEnvelope, "Every check passed"),
    **openapi.errors(403, unauthorized=False),
    # Never 404: an unknown collection gets the answer of a wrong code.
    403: {
        "model": openapi.ErrorEnvelope,
        "description": "The code is missing or wrong, or there is no such collection (one "
        "answer for all three)",
    },
    500: {
        "model": openapi.FailedHealthEnvelope | openapi.ErrorEnvelope,
        "description": "One of the checks failed (each is listed), or a server fault",
    },
}


def version_json(version: VersionRecord) -> dict[str, Any]:
    return {
        "id": version.id,
        "collectionId": version.collection_id,
        "versionNumber": version.number,
        "filename": version.filename,
        "filesize": version.size,
        "sha256": version.sha256,
        "uploadedBySessionId": version.session_id,
        "user": version.user,
        "CreatedAt": rfc3339(version.created_at),
        "UpdatedAt": rfc3339(version.updated_at),
        "DeletedAt": rfc3339(version.deleted_at),
    }


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "versions": usage.versions,
        "bytesUsed": usage.bytes_used,
        "maxBackupsCount": usage.max_backups_count,
        "maxOneVersionSize": usage.max_one_version_size,
        "maxCollectionSize": usage.max_collection_size,
    }


async def _with_deadline(chunks: AsyncIterator[bytes], seconds: float) -> AsyncIterator[bytes]:
    deadline = asyncio.get_running_loop().time() + seconds
    async for chunk in chunks:
        if asyncio.get_running_loop().time() > deadline:
            raise RequestTimeout("Request took too long")
        yield chunk


@router.post(
    "/api/stable/repository/collection/{collectionId}/version",
    summary="Upload a new version (OpenPGP-encrypted data)",
    openapi_extra=UPLOAD_DOC,
    responses={
        **openapi.ok(openapi.UploadEnvelope, "Stored as a new version"),
        **openapi.errors(403, 404, 408, 409),
    },
)
@router.post(
    "/api/alpha/repository/collection/{collectionId}/version",
    openapi_extra=UPLOAD_DOC,
    include_in_schema=False,
)
async def upload(
    request: Request, collectionId: CollectionId, auth: UploadAuth, services: ServicesDep
) -> JSONResponse:
    async def refused(exc: DomainError) -> DomainError:
        # What is refused here, before or around the service, is told from here; the
        # service tells everything else.
        await services.backups.upload_refused(auth, collectionId, exc)
        return exc

    length_header = request.headers.get("content-length")
    if length_header is not None and not _CONTENT_LENGTH.match(length_header):
        raise await refused(InvalidInput("invalid Content-Length header"))
    content_length = int(length_header) if length_header is not None else None
    if content_length == 0:
        raise await refused(InvalidInput("sent empty data"))
    # Until the body has been read to its end, an error answer drains it (http/errors.py).
    request.state.unread_body = True

    async def tracked() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            yield chunk
        request.state.unread_body = False

    try:
        decode = form_decoder(request.headers.get("content-type", ""))
    except InvalidInput as exc:
        raise await refused(exc) from None
    limit = services.settings.http_upload_timeout.total_seconds()
    try:
        async with asyncio.timeout(limit):
            # A form's Content-Length counts against the collection's limit as a raw body's.
            version = await services.backups.upload(
                auth, collectionId, tracked(), content_length, decode
            )
    except TimeoutError:
        raise await refused(RequestTimeout("Request took too long")) from None
    return ok({"version": version_json(version)})


@router.get(
    "/api/stable/repository/collection/{collectionId}/version",
    summary="List the versions of a collection and its usage",
    responses={**openapi.ok(openapi.VersionsEnvelope), **openapi.errors(403, 404)},
)
@router.get("/api/alpha/repository/collection/{collectionId}/version", include_in_schema=False)
async def list_versions(
    collectionId: CollectionId, auth: Auth, services: ServicesDep
) -> JSONResponse:
    collection, versions, usage = await services.backups.list_versions(auth, collectionId)
    return ok(
        {
            "collectionId": collection.name,
            "versions": [version_json(v) for v in versions],
            "usage": usage_json(usage),
        }
    )


@router.get(
    "/api/stable/repository/collection",
    summary="List the collections the caller may use",
    responses={**openapi.ok(openapi.CollectionsEnvelope), **openapi.errors()},
)
@router.get("/api/alpha/repository/collection", include_in_schema=False)
async def list_collections(auth: Auth, services: ServicesDep) -> JSONResponse:
    found = await services.backups.list_collections(auth)
    return ok(
        {
            "collections": [
                {
                    "id": c.name,
                    "description": c.description,
                    "filenameTemplate": c.filename_template,
                    "strategyName": c.strategy.name,
                    "windows": [
                        {"from": w.cron, "duration": int(w.duration.total_seconds())}
                        for w in c.windows
                    ],
                    "usage": usage_json(u),
                }
                for c, u in found
            ]
        }
    )


def _parse_range(header: str | None) -> tuple[int | None, int | None] | None:
    """A single ``bytes=`` range; anything else (several ranges, other units) is ignored
    and the whole file is sent, as RFC 9110 allows."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    return _position(match.group(1)), _position(match.group(2))


# Past the end of any file. Longer numbers are not converted: int() refuses more than 4300
# digits (a 500), and a Range header may hold thousands.
_BEYOND_ANY_FILE = 2**63


def _position(digits: str) -> int | None:
    if not digits:
        return None
    return int(digits) if len(digits) <= 19 else _BEYOND_ANY_FILE


def content_disposition(filename: str) -> str:
    """``attachment`` with the file name; a name that is not plain ASCII (header values are
    Latin-1 bytes) is sent as RFC 6266 ``filename*`` with an ASCII fallback."""
    if filename.isascii():
        return f'attachment; filename="{filename}"'
    fallback = "".join(ch if ch.isascii() else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _etag(download: Download) -> str:
    return f'"{download.version.sha256}"'


def _download_headers(download: Download) -> dict[str, str]:
    version = download.version
    digest = base64.b64encode(bytes.fromhex(version.sha256)).decode()
    headers = {
        "Content-Disposition": content_disposition(version.filename),
        "Content-Length": str(download.length),
        "ETag": _etag(download),
        "Digest": f"sha-256={digest}",
        "Repr-Digest": f"sha-256=:{digest}:",
        "X-Content-SHA256": version.sha256,
        "Accept-Ranges": "bytes",
        "Last-Modified": version.created_at.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "Cache-Control": "private, no-transform",
    }
    if download.partial:
        headers["Content-Range"] = f"bytes {download.start}-{download.end - 1}/{version.size}"
    return headers


# GET and HEAD as two routes: one route with both methods gives both the same operation id.
@router.get(
    "/api/stable/repository/collection/{collectionId}/version/{version}",
    summary="Download a version (whole, or a byte range)",
    response_class=StreamingResponse,
    responses=DOWNLOAD_RESPONSES,
)
@router.head(
    "/api/stable/repository/collection/{collectionId}/version/{version}",
    summary="The headers of a download: size and checksums",
    response_class=StreamingResponse,
    responses=DOWNLOAD_RESPONSES,
)
@router.api_route(
    "/api/alpha/repository/collection/{collectionId}/version/{version}",
    methods=["GET", "HEAD"],
    include_in_schema=False,
)
async def download(
    request: Request,
    collectionId: CollectionId,
    version: VersionRef,
    auth: Auth,
    services: ServicesDep,
) -> Response:
    if_none_match = request.headers.get("if-none-match")
    prepared = await services.backups.prepare_download(
        auth, collectionId, version, _parse_range(request.headers.get("range"))
    )
    if if_none_match and if_none_match.strip() in {_etag(prepared), "*"}:
        return Response(status_code=304, headers={"ETag": _etag(prepared)})
    prepared = await services.backups.ensure_object(auth, prepared)
    status = 206 if prepared.partial else 200
    if request.method == "HEAD":
        return Response(
            status_code=status,
            headers=_download_headers(prepared),
            media_type="application/octet-stream",
        )
    if prepared.local_path is not None and "range" not in request.headers:
        # Sent by the server itself (zero-copy where it supports the ASGI path-send extension).
        # Told before the stat, so that nothing slower than a stat separates it from the
        # sending. Stat here, not in FileResponse: a rotation may have deleted the file
        # since ensure_object, and here that still becomes a clean 404 (or 503 if still
        # live; or, for latest, the newer version, told too).
        await services.backups.record_download(auth, prepared)
        path: str = prepared.local_path
        stat_result = None
        for _ in range(LATEST_ATTEMPTS):
            try:
                stat_result = await asyncio.to_thread(os.stat, path)
                break
            except FileNotFoundError:
                prepared = await services.backups.ensure_object(auth, prepared)
                if prepared.local_path is None:
                    break
                path = prepared.local_path
                await services.backups.record_download(auth, prepared)
        if stat_result is None:
            raise DependencyUnavailable(STORAGE_UNAVAILABLE)
        headers = _download_headers(prepared)
        del headers["Content-Length"]
        return FileResponse(
            path,
            headers=headers,
            media_type="application/octet-stream",
            stat_result=stat_result,
        )
    headers = _download_headers(prepared)
    limit = services.settings.http_download_timeout.total_seconds()
    # The first chunk before the headers: a missing object is still a clean 404/503.
    chunks = services.backups.stream(prepared)
    first = await anext(chunks, b"")
    await services.backups.record_download(auth, prepared)

    async def whole() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(
        _with_deadline(whole(), limit),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


@router.get(
    "/api/stable/repository/collection/{collectionId}/health",
    summary="Health of a collection: its checks, for monitoring",
    responses=HEALTH_RESPONSES,
)
@router.get("/api/alpha/repository/collection/{collectionId}/health", include_in_schema=False)
async def collection_health(
    request: Request,
    collectionId: CollectionId,
    services: ServicesDep,
    code: Annotated[str | None, Query(max_length=1024)] = None,
) -> JSONResponse:
    given = code if code is not None else request.headers.get("authorization", "")
    results = await services.backups.health(collectionId, given)
    data = {"health": [r.as_dict() for r in results]}
    if not all(r.status for r in results):
        return error(500, "one of checks failed", data)
    return ok(data)
