"""Collections and versions (docs/api.md, docs/collections.md): upload, download, listings,
health, the retention dry run, protecting and deleting a version."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from backup_repository.domain.errors import NotFound, RequestTimeout
from backup_repository.domain.identity import Collection
from backup_repository.domain.rotation import FIFO_PLUS_OLDER, GFS, Decision, gfs_rules
from backup_repository.domain.signatures import (
    SIGNATURE_HEADER,
    SIGNER_RESPONSE_HEADER,
    BadSignatureInput,
    binary_signature,
    dearmor,
    signature_from_header,
)
from backup_repository.http.bodies import FormFields, form_decoder
from backup_repository.http.deps import (
    Auth,
    BearerDoc,
    ClientIP,
    ServicesDep,
    bearer_token,
    presented_keys,
)
from backup_repository.http.envelope import error, ok, rfc3339
from backup_repository.http.openapi import responses as openapi
from backup_repository.services.auth import AuthContext
from backup_repository.services.collections import UploadWindow, Usage
from backup_repository.services.downloads import Download
from backup_repository.services.ports import VersionRecord
from backup_repository.services.retention import RetentionReport, RetentionView
from backup_repository.services.uploads import TOOK_TOO_LONG, BodyDecoder, UploadRequest

router = APIRouter(tags=["collections"])

CollectionId = Annotated[str, Path(max_length=255, examples=["db-prod"])]
VersionRef = Annotated[
    str, Path(max_length=32, description="a number, vN or latest", examples=["latest", "v1"])
]
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The encrypted file: a raw body (any content type, chunked or not), "
        "or a form with the file in the field `file`. For a collection with "
        "trustedUploaders, a detached OpenPGP signature over the file by a trusted key: in "
        "the header X-Backup-Signature (base64), or in the multipart part `signature` "
        "before the part `file`.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "signature": {
                            "type": "string",
                            "format": "binary",
                            "description": "trustedUploaders: the detached signature, "
                            "binary or armoured; before `file`",
                        },
                        "file": {"type": "string", "format": "binary"},
                    },
                    "required": ["file"],
                }
            },
        },
    }
}


_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_SIGNATURE_HEADERS: dict[str, Any] = {
    SIGNATURE_HEADER: {
        "description": "a signed version only: base64 of the trusted uploader's detached "
        "OpenPGP signature over the whole file",
        "schema": {"type": "string"},
    },
    SIGNER_RESPONSE_HEADER: {
        "description": "a signed version only: the fingerprint of the key that signed it",
        "schema": {"type": "string"},
    },
}
DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The whole file", "content": _BINARY, "headers": _SIGNATURE_HEADERS},
    206: {
        "description": "The requested range (Content-Range)",
        "content": _BINARY,
        "headers": _SIGNATURE_HEADERS,
    },
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
        # "" for the user's own password; null when no longer known.
        "accessKeyName": version.access_key,
        "CreatedAt": rfc3339(version.created_at),
        "UpdatedAt": rfc3339(version.updated_at),
        "DeletedAt": rfc3339(version.deleted_at),
        # The primary key fingerprint of the trusted uploader who signed it; null: unsigned.
        "signedBy": version.signer_fingerprint,
        "protected": version.protected,
    }


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "versions": usage.versions,
        "bytesUsed": usage.bytes_used,
        "maxBackupsCount": usage.max_backups_count,
        "maxOneVersionSize": usage.max_one_version_size,
        "maxCollectionSize": usage.max_collection_size,
    }


def window_json(window: UploadWindow) -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "open": window.state.open,
        "uploadAllowed": window.upload_allowed,
        "opensAt": rfc3339(window.state.opens),
        "closesAt": rfc3339(window.state.closes),
    }


async def _with_deadline(chunks: AsyncIterator[bytes], seconds: float) -> AsyncIterator[bytes]:
    deadline = asyncio.get_running_loop().time() + seconds
    async for chunk in chunks:
        if asyncio.get_running_loop().time() > deadline:
            raise RequestTimeout(TOOK_TOO_LONG)
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
    request: Request,
    collectionId: CollectionId,
    services: ServicesDep,
    client_ip: ClientIP,
    _scheme: BearerDoc,
) -> JSONResponse:
    # The service authenticates the caller and checks the headers itself, so that every
    # refusal of an upload is emitted in one place.
    async def authenticate() -> AuthContext:
        return await services.auth.authenticate(bearer_token(request), client_ip)

    def reading_body() -> None:
        # Until the body has been read to its end, an error answer drains it (http/errors.py).
        request.state.unread_body = True

    fields = FormFields()

    def decoder() -> BodyDecoder | None:
        return form_decoder(request.headers.get("content-type", ""), fields)

    def signature() -> bytes | None:
        header = request.headers.get(SIGNATURE_HEADER)
        if header is not None and fields.signature is not None:
            raise BadSignatureInput(
                f"the signature came twice (the {SIGNATURE_HEADER} header and the form's "
                "part 'signature'): send it once"
            )
        if header is not None:
            return signature_from_header(header)
        if fields.signature is not None:
            return binary_signature(fields.signature)
        return None

    async def tracked() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            yield chunk
        request.state.unread_body = False

    version = await services.uploads.upload(
        UploadRequest(
            collection_id=collectionId,
            client_ip=client_ip,
            content_length=request.headers.get("content-length"),
            body=tracked(),
            authenticate=authenticate,
            decoder=decoder,
            reading_body=reading_body,
            signature=signature,
        )
    )
    return ok({"version": version_json(version), "warnings": services.uploads.warnings(version)})


@router.get(
    "/api/stable/repository/collection/{collectionId}/version",
    summary="List the versions of a collection and its usage",
    responses={**openapi.ok(openapi.VersionsEnvelope), **openapi.errors(403, 404)},
)
@router.get("/api/alpha/repository/collection/{collectionId}/version", include_in_schema=False)
async def list_versions(
    collectionId: CollectionId, auth: Auth, services: ServicesDep
) -> JSONResponse:
    collection, versions, usage, window = await services.collections.list_versions(
        auth, collectionId
    )
    return ok(
        {
            "collectionId": collection.name,
            "versions": [version_json(v) for v in versions],
            "usage": usage_json(usage),
            "backupWindow": window_json(window),
        }
    )


@router.get(
    "/api/stable/repository/collection/{collectionId}/retention",
    summary="Retention dry run: what the rotation strategy keeps now and after one more upload",
    responses={**openapi.ok(openapi.RetentionEnvelope), **openapi.errors(403, 404)},
)
@router.get("/api/alpha/repository/collection/{collectionId}/retention", include_in_schema=False)
async def retention(collectionId: CollectionId, auth: Auth, services: ServicesDep) -> JSONResponse:
    report = await services.uploads.retention.report(auth, collectionId)
    return ok(retention_json(report))


def retention_json(report: RetentionReport) -> dict[str, Any]:
    """The dry run as docs/collections.md shows it."""
    collection = report.collection
    after = report.after_upload
    return {
        "collectionId": collection.name,
        "now": rfc3339(report.now),
        "strategy": strategy_json(collection),
        "current": {
            "versions": [decision_json(d) for d in report.current.decisions],
            **view_totals(report.current),
        },
        "afterUpload": {
            "versions": [
                decision_json(d, upcoming=d.version is report.upcoming) for d in after.decisions
            ],
            **view_totals(after),
            "nextUploadMaxBytes": report.limit.bytes,
            "quotaRule": report.limit.explain(),
        },
    }


def strategy_json(collection: Collection) -> dict[str, Any]:
    strategy = collection.strategy
    found: dict[str, Any] = {
        "name": strategy.name,
        "maxBackupsCount": collection.max_backups_count,
    }
    if strategy.name == FIFO_PLUS_OLDER:
        spacing = strategy.keep_last_older_not_more_than
        found["keepLastOlderNotMoreThan"] = int(spacing.total_seconds()) if spacing else 0
        found["maxOlderCopies"] = strategy.max_older_copies
    elif strategy.name == GFS:
        for rule, count in gfs_rules(strategy):
            found[f"keep{rule.value.capitalize()}"] = count
        found["timeZone"] = strategy.time_zone
    return found


def decision_json(decision: Decision, *, upcoming: bool = False) -> dict[str, Any]:
    version = decision.version
    because = None if decision.kept else "maxBackupsCount" if decision.over_count else "noRule"
    return {
        "version": version.number,
        "createdAt": rfc3339(version.created_at),
        "size": None if upcoming else version.size,
        "upcoming": upcoming,
        "protected": version.protected,
        "keptBy": [decision.rule.value] if decision.kept and decision.rule else [],
        "period": decision.period if decision.kept else None,
        "fate": "kept" if decision.kept else "rotated",
        "rotatedBecause": because,
    }


def view_totals(view: RetentionView) -> dict[str, int]:
    return {
        "versionsKept": view.versions_kept,
        "versionsRotated": view.versions_rotated,
        "bytesKept": view.bytes_kept,
        "bytesFreed": view.bytes_freed,
    }


@router.post(
    "/api/stable/repository/collection/{collectionId}/version/{version}/protect",
    summary="Protect a version: rotation never removes it, and it cannot be deleted",
    responses={
        **openapi.ok(openapi.VersionEnvelope, "Protected (or already was)"),
        **openapi.errors(403, 404, 409),
    },
)
@router.post(
    "/api/alpha/repository/collection/{collectionId}/version/{version}/protect",
    include_in_schema=False,
)
async def protect_version(
    collectionId: CollectionId, version: VersionRef, auth: Auth, services: ServicesDep
) -> JSONResponse:
    changed = await services.versions.protect(auth, collectionId, version, protected=True)
    return ok({"version": version_json(changed)})


@router.delete(
    "/api/stable/repository/collection/{collectionId}/version/{version}/protect",
    summary="Unprotect a version: rotation may remove it again",
    responses={
        **openapi.ok(openapi.VersionEnvelope, "Unprotected (or already was)"),
        **openapi.errors(403, 404, 409),
    },
)
@router.delete(
    "/api/alpha/repository/collection/{collectionId}/version/{version}/protect",
    include_in_schema=False,
)
async def unprotect_version(
    collectionId: CollectionId, version: VersionRef, auth: Auth, services: ServicesDep
) -> JSONResponse:
    changed = await services.versions.protect(auth, collectionId, version, protected=False)
    return ok({"version": version_json(changed)})


@router.delete(
    "/api/stable/repository/collection/{collectionId}/version/{version}",
    summary="Delete a version (collection managers only; never a protected one)",
    responses={
        **openapi.ok(openapi.VersionEnvelope, "Deleted: the version as it was, DeletedAt set"),
        **openapi.errors(403, 404, 409),
    },
)
@router.delete(
    "/api/alpha/repository/collection/{collectionId}/version/{version}", include_in_schema=False
)
async def delete_version(
    collectionId: CollectionId,
    version: VersionRef,
    auth: Auth,
    services: ServicesDep,
    reason: Annotated[
        str | None,
        Query(
            max_length=1024,
            description="why the version is deleted (required, at most 500 characters): "
            "kept in the audit log",
            examples=["restored and found corrupt"],
        ),
    ] = None,
) -> JSONResponse:
    deleted = await services.versions.delete(auth, collectionId, version, reason)
    return ok({"version": version_json(deleted)})


@router.get(
    "/api/stable/repository/collection",
    summary="List the collections the caller may use",
    responses={**openapi.ok(openapi.CollectionsEnvelope), **openapi.errors()},
)
@router.get("/api/alpha/repository/collection", include_in_schema=False)
async def list_collections(auth: Auth, services: ServicesDep) -> JSONResponse:
    found = await services.collections.list_collections(auth)
    return ok(
        {
            "collections": [
                {
                    "id": c.name,
                    "description": c.description,
                    "filenameTemplate": c.filename_template,
                    "strategyName": c.strategy.name,
                    "windows": [
                        {
                            "from": w.cron,
                            "duration": int(w.duration.total_seconds()),
                            "timezone": "UTC",
                        }
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


def _download_headers(download: Download) -> dict[str, str]:
    version = download.version
    digest = base64.b64encode(bytes.fromhex(version.sha256)).decode()
    headers = {
        "Content-Disposition": content_disposition(version.filename),
        "Content-Length": str(download.length),
        "ETag": download.etag,
        "Digest": f"sha-256={digest}",
        "Repr-Digest": f"sha-256=:{digest}:",
        "X-Content-SHA256": version.sha256,
        "Accept-Ranges": "bytes",
        "Last-Modified": version.created_at.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "Cache-Control": "private, no-transform",
    }
    if version.signature and version.signer_fingerprint:
        # A trusted uploader's detached signature over the whole file (base64 of binary).
        # Stored armoured by the upload; a row altered into something else is left out
        # (the download still works, and --verify-signature then refuses it).
        with contextlib.suppress(BadSignatureInput):
            headers[SIGNATURE_HEADER] = base64.b64encode(dearmor(version.signature)).decode()
            headers[SIGNER_RESPONSE_HEADER] = version.signer_fingerprint
    if download.partial:
        headers["Content-Range"] = f"bytes {download.start}-{download.end - 1}/{version.size}"
    return headers


class StoredFileResponse(FileResponse):
    """A version's file, sent by the server itself (path-send), with the version's ETag and
    Last-Modified given by the handler. Starlette would also derive both from the file's stat
    on every download (an MD5 and a formatted date, about 18 µs), only to drop them for
    those given: from the stat, only the length is taken."""

    def set_stat_headers(self, stat_result: os.stat_result) -> None:
        self.headers.setdefault("content-length", str(stat_result.st_size))


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
    outgoing = await services.downloads.download(
        auth,
        collectionId,
        version,
        _parse_range(request.headers.get("range")),
        if_none_match=request.headers.get("if-none-match"),
        body=request.method != "HEAD",
        # A Range header the service ignores still gets a stream, not the file.
        local_file="range" not in request.headers,
    )
    prepared = outgoing.download
    if outgoing.not_modified:
        return Response(status_code=304, headers={"ETag": prepared.etag})
    status = 206 if prepared.partial else 200
    headers = _download_headers(prepared)
    if outgoing.file is not None:
        # Sent by the server itself (zero-copy where it supports the ASGI path-send
        # extension), with the stat the service took.
        path, stat_result = outgoing.file
        del headers["Content-Length"]
        return StoredFileResponse(
            path, headers=headers, media_type="application/octet-stream", stat_result=stat_result
        )
    if outgoing.chunks is None:  # HEAD
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    limit = services.settings.http_download_timeout.total_seconds()
    return StreamingResponse(
        _with_deadline(outgoing.chunks, limit),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


@router.get(
    "/api/stable/repository/collection/{collectionId}/version/{version}/signature",
    summary="The detached OpenPGP signature of a signed version (ASCII-armoured)",
    response_class=Response,
    responses={
        200: {
            "description": "The trusted uploader's detached signature over the whole file; "
            "X-Backup-Signed-By names its key",
            "content": {"application/pgp-signature": {"schema": {"type": "string"}}},
        },
        **openapi.errors(403, 404),
    },
)
async def version_signature(
    collectionId: CollectionId, version: VersionRef, auth: Auth, services: ServicesDep
) -> Response:
    found = (await services.downloads.resolve(auth, collectionId, version, None)).version
    if not found.signature or not found.signer_fingerprint:
        raise NotFound(
            f"version {found.number} of collection {found.collection_id} was uploaded "
            "without a signature (its collection had no trustedUploaders then)"
        )
    return Response(
        found.signature,
        media_type="application/pgp-signature",
        headers={
            SIGNER_RESPONSE_HEADER: found.signer_fingerprint,
            "Content-Disposition": content_disposition(f"{found.filename}.sig"),
        },
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
    given = presented_keys(request.headers.get("authorization"), code)
    results = await services.collection_health.report(collectionId, given)
    data = {"health": [r.as_dict() for r in results]}
    if not all(r.status for r in results):
        return error(500, "one of checks failed", data)
    return ok(data)
