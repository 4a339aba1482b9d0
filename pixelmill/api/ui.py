"""The web UI: ``/ui`` (playground) and ``/ui/gallery``, static pages served by pixelmill.

Plain HTML, CSS and JavaScript modules shipped in ``api/static`` (``playground.html``,
``gallery.html``, ``ui.css``, ``ui-*.js``; flat, so the package data glob ships them): no CDN, no build
step, no server-side rendering. The pages are open (like ``/dashboard``): they hold no
data. Everything they show comes from the ordinary API (``/v1/jobs``, ``/v1/models``,
``/v1/loras``, ``/v1/controlnets``, ``/v1/batches/{id}/archive``…), which checks the key
the page sends as ``Authorization: Bearer``; with keys on, the pages ask for one and keep
it in the tab's ``sessionStorage``.

``/ui/config.json`` gives the pages what they cannot read elsewhere: the scheduler names
this server accepts and its request limits (the same facts the OpenAPI schema publishes).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pixelmill.api.deps import SettingsDep
from pixelmill.core.samplers import available_schedulers

router = APIRouter(include_in_schema=False)

_PAGES = {"playground": "playground.html", "gallery": "gallery.html"}
_ASSETS = {
    "ui.css": "text/css",
    "ui-api.js": "text/javascript",
    "ui-infotext.js": "text/javascript",
    "ui-playground.js": "text/javascript",
    "ui-mask.js": "text/javascript",
    "ui-gallery.js": "text/javascript",
}
# no-store: a server upgrade never mixes an old cached script with a new page.
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
# The pages load only their own scripts and styles; images may be data:/blob: URLs (previews, uploads).
_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _read(name: str) -> str:
    return resources.files("pixelmill.api").joinpath("static", name).read_text(encoding="utf-8")


def _page(name: str) -> HTMLResponse:
    return HTMLResponse(_read(_PAGES[name]), headers=_HEADERS | {"Content-Security-Policy": _CSP})


@router.get("/ui", response_class=HTMLResponse)
async def playground() -> HTMLResponse:
    """The playground: compose a request, follow its job live, see the images."""
    return _page("playground")


@router.get("/ui/", response_class=RedirectResponse)
async def playground_slash() -> RedirectResponse:
    """``/ui/`` is the playground too (people type the slash)."""
    return RedirectResponse("/ui", status_code=308)


@router.get("/ui/gallery", response_class=HTMLResponse)
async def gallery() -> HTMLResponse:
    """The gallery: this key's past jobs, newest first."""
    return _page("gallery")


@router.get("/ui/config.json")
async def ui_config(settings: SettingsDep) -> dict:
    """Scheduler names and request limits for the playground's controls."""
    return {
        "schedulers": available_schedulers(),
        "limits": {
            "min_side": settings.min_side, "max_side": settings.max_side, "max_pixels": settings.max_pixels,
            "max_steps": settings.max_steps, "max_n": settings.max_n, "max_guidance": settings.max_guidance,
        },
        "default_steps": settings.default_steps,
    }


@router.get("/ui/assets/{name}")
async def asset(name: str) -> Response:
    """The pages' scripts and stylesheet (a fixed list: nothing else is served from here)."""
    if name not in _ASSETS:
        return Response(status_code=404)
    return Response(_read(name), media_type=_ASSETS[name], headers=_HEADERS)
