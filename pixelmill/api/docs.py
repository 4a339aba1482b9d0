"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), with every asset served by pixelmill.

FastAPI's built-in pages load their scripts, styles and favicon from public CDNs, so on
an offline or air-gapped host (where a self-hosted server often runs) they stay blank.
These routes render the same pages but point them at copies shipped in the
``fastapi-offline`` package (its ``static/`` folder; we use only those files, not its
``FastAPIOffline`` factory) and served under ``/docs/assets/``. ReDoc's Google Fonts
and Swagger UI's online validator are off for the same reason, and a Content-Security-
Policy keeps both pages on this server: ReDoc's bundle draws a Redocly logo from its CDN
that no option turns off, and the browser now refuses it instead of asking the CDN
(the logo hides itself when it cannot load).

Like the OpenAPI document itself the pages are open routes (no key): they describe the
API, which is public in the repository anyway. Asset names come from a fixed table, so no
name a client sends ever becomes a file path.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from pixelmill.core.errors import NotFound

ASSETS_PATH = "/docs/assets"
# The files this router serves, by the name in the URL; nothing else under the folder is reachable.
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
# The assets change only with the package version; a day of caching spares a reload of 2.6 MB.
_ASSET_HEADERS = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
# Both pages start their UI with an inline script and style (FastAPI's HTML), ReDoc runs its
# search in a worker made from a blob: URL, and both draw icons from data: URLs; nothing else
# may come from anywhere but this server.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
                               "worker-src 'self' blob:; connect-src 'self'; base-uri 'self'; "
                               "form-action 'self'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(include_in_schema=False)


@cache
def _asset_folder() -> Path:
    """The folder holding the Swagger UI and ReDoc bundles (inside the installed package)."""
    return Path(str(resources.files("fastapi_offline").joinpath("static")))


def _urls(request: Request) -> tuple[str, str]:
    """The OpenAPI document's URL and the assets' base URL, behind a proxy's root path too."""
    root = request.scope.get("root_path", "").rstrip("/")
    return f"{root}{request.app.openapi_url}", f"{root}{ASSETS_PATH}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI: try every operation from the browser."""
    openapi_url, assets = _urls(request)
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
        # validatorUrl null: Swagger UI would otherwise send the spec's URL to swagger.io.
        swagger_ui_parameters={"validatorUrl": None, **(request.app.swagger_ui_parameters or {})},
    )
    page.headers.update(_PAGE_HEADERS)
    return page


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc: the API reference on one page."""
    openapi_url, assets = _urls(request)
    page = get_redoc_html(
        openapi_url=openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{assets}/redoc.standalone.js",
        redoc_favicon_url=f"{assets}/favicon.png",
        with_google_fonts=False,
    )
    page.headers.update(_PAGE_HEADERS)
    return page


@router.get(ASSETS_PATH + "/{name}")
async def asset(name: str) -> FileResponse:
    """One of the bundled files named in the table above; 404 for any other name."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no documentation asset named {name!r}", param="name")
    return FileResponse(_asset_folder() / name, media_type=media_type, headers=_ASSET_HEADERS)
