"""``/docs``: Swagger UI over ``/openapi.json``, served entirely by this server.

The page loads only files of its own (the Swagger UI build bundled in the
``fastapi-offline`` package, served under ``/docs/assets/``) and says so in its
Content-Security-Policy: no script, style or font from anywhere else, no framing. The one
inline script (the start-up of Swagger UI) is allowed by its SHA-256 hash. Relative URLs
keep the page working behind a proxy that serves the API under a prefix.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
# The files of the bundle the page uses, and their media types; nothing else is served.
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}

_INIT_SCRIPT = """
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
"""
_INIT_HASH = base64.b64encode(hashlib.sha256(_INIT_SCRIPT.encode()).digest()).decode()

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        f"script-src 'self' 'sha256-{_INIT_HASH}'",
        # Swagger UI sets style attributes from its scripts.
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Backup Repository API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script>{_INIT_SCRIPT}</script>
</body>
</html>
"""


def assets_folder() -> Path:
    return Path(str(importlib.resources.files("fastapi_offline") / "static"))


async def docs_page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers=PAGE_HEADERS)


def _asset_endpoint(folder: Path) -> Callable[[Request], Awaitable[Response]]:
    async def asset(request: Request) -> Response:
        name = str(request.path_params["name"])
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(404)
        return FileResponse(
            folder / name,
            media_type=media_type,
            headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
        )

    return asset


def install(app: FastAPI) -> None:
    """Serve the page at ``/docs`` and its files under ``/docs/assets/`` (not part of the
    API, so not in its description)."""
    folder = assets_folder()
    missing = [name for name in ASSETS if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"Swagger UI files missing from fastapi-offline: {', '.join(missing)}")
    app.add_route(DOCS_PATH, docs_page, methods=["GET"], include_in_schema=False)
    app.add_route(
        ASSETS_PATH + "/{name}",
        _asset_endpoint(folder),
        methods=["GET"],
        include_in_schema=False,
    )
