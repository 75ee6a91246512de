"""The dashboard (``/ui/``), a collection's page (``/ui/collections/<id>``) and the download
of a version's encrypted file from it."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import Path, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from starlette.responses import Response

from backup_repository.http.routers.collections import content_disposition
from backup_repository.http.ui.charts import sparkline
from backup_repository.http.ui.rendering import render
from backup_repository.http.ui.routing import console_router
from backup_repository.http.ui.session import Page, ServicesOf, public_base_url
from backup_repository.services.console import ConsoleService, Status

router = console_router()

CollectionId = Annotated[str, Path(max_length=255)]


def console_of(request: Request) -> ConsoleService:
    console: ConsoleService = request.app.state.console
    return console


@router.get("/")
async def dashboard(
    request: Request,
    session: Page,
    name: Annotated[str, Query(max_length=255)] = "",
) -> Response:
    board = await console_of(request).dashboard(session.auth, name)
    return render(
        request,
        "dashboard.html",
        {"board": board, "statuses": list(Status), "sparkline": sparkline},
    )


@router.get("/collections/{collection_id}")
async def collection(
    request: Request, collection_id: CollectionId, session: Page, services: ServicesOf
) -> Response:
    page = await console_of(request).collection(
        session.auth, collection_id, public_base_url(request, services)
    )
    return render(request, "collection.html", {"page": page, "sparkline": sparkline})


@router.get("/collections/{collection_id}/versions/{number}/download")
async def download(
    request: Request,
    collection_id: CollectionId,
    number: Annotated[int, Path(ge=1, le=2**31 - 1)],
    session: Page,
    services: ServicesOf,
) -> Response:
    """The encrypted file as stored, authorized and recorded as the API's download is."""
    outgoing = await services.downloads.download(session.auth, collection_id, str(number), None)
    version = outgoing.download.version
    headers = {
        "Content-Disposition": content_disposition(version.filename),
        "X-Content-SHA256": version.sha256,
        "Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(version.sha256)).decode()}:",
    }
    if outgoing.file is not None:
        path, stat_result = outgoing.file
        return FileResponse(
            path, headers=headers, media_type="application/octet-stream", stat_result=stat_result
        )
    assert outgoing.chunks is not None
    headers["Content-Length"] = str(outgoing.download.length)
    return StreamingResponse(
        outgoing.chunks, headers=headers, media_type="application/octet-stream"
    )
