"""The one table from pixelmill errors to HTTP, and the error body each dialect returns.

The default body is OpenAI's envelope (the OpenAI and native routes)::

    {"error": {"message": "...", "type": "invalid_request_error",
               "param": "size", "code": "invalid_request", "request_id": "..."}}

A dialect whose clients expect another shape (A1111's ``{"error", "detail", …}``, Replicate's
RFC 7807 problem) declares an :class:`ErrorShape`: the paths it answers for, its body and the
body's JSON schema, and the few statuses where its clients expect another code. ``create_app``
installs the shapes; every error, whether raised in a route, found by validation or refused by
the middleware before the body is read, is rendered through :func:`error_response` with the
shape of its path (:func:`shape_of_path`), and ``api.openapi`` documents each route's errors
with the schema of the same shape.

Server faults (5xx) carry the request id, which also appears in the log next to the
traceback; the body never contains a traceback, a path or a secret.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from pixelmill.core import errors
from pixelmill.jobs.predictions import PREFIX as REPLICATE_PREFIX

log = logging.getLogger("pixelmill.api")

# (status, OpenAI error type) for each error class; the first matching base wins.
STATUS_TABLE: list[tuple[type[errors.PixelmillError], int, str]] = [
    (errors.PayloadTooLarge, 413, "invalid_request_error"),
    (errors.InvalidRequest, 400, "invalid_request_error"),
    (errors.NotFound, 404, "invalid_request_error"),
    (errors.Conflict, 409, "invalid_request_error"),
    (errors.Unauthorized, 401, "authentication_error"),
    (errors.Forbidden, 403, "permission_error"),
    (errors.Overloaded, 429, "rate_limit_error"),
    (errors.GenerationCanceled, 409, "invalid_request_error"),
    (errors.ModelUnavailable, 503, "server_error"),
    (errors.WaitTimeout, 504, "server_error"),
    (errors.GenerationFailed, 500, "server_error"),
    (errors.PixelmillError, 500, "server_error"),
]


def status_of(exc: errors.PixelmillError, shape: ErrorShape | None = None) -> tuple[int, str]:
    """HTTP status and OpenAI error type for ``exc`` (a ``shape``'s own status wins)."""
    for cls, status, kind in STATUS_TABLE:
        if isinstance(exc, cls):
            break
    else:
        raise AssertionError("PixelmillError is the last row of the table")
    for cls, own in (shape.statuses if shape else {}).items():
        if isinstance(exc, cls):
            return own, kind
    return status, kind


def request_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def encodable(text: str | None) -> str | None:
    """``text`` with anything UTF-8 cannot encode (a lone surrogate a client sent as
    ``"\\ud800"`` and an error echoed) escaped, so rendering an error can never fail."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_message(exc: errors.PixelmillError, status: int, request_id: str | None) -> str | None:
    """``exc``'s message, safe to encode; a 5xx's names the request id to quote in a report."""
    message = f"{exc.message} (request id {request_id})" if status >= 500 and request_id else exc.message
    return encodable(message)


_TEXT = {"type": "string"}
_OPTIONAL_TEXT = {"type": ["string", "null"]}


def _object(name: str, required: Sequence[str], /, **properties: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema of an error body (``name`` is its ``title``: its name in the OpenAPI
    components); every body also carries pixelmill's ``param`` and ``request_id``."""
    properties = {**properties, "param": _OPTIONAL_TEXT, "request_id": _OPTIONAL_TEXT}
    return {"title": name, "type": "object", "required": list(required), "properties": properties}


OPENAI_SCHEMA = {
    "title": "ErrorResponse", "type": "object", "required": ["error"],
    "properties": {
        "error": _object("Error", ["message", "type", "code"], message=_TEXT, type=_TEXT, code=_TEXT),
    },
}
"""The JSON schema of :func:`error_body`."""


def error_body(exc: errors.PixelmillError, request_id: str | None) -> dict:
    """OpenAI's envelope for ``exc`` (the default shape)."""
    status, kind = status_of(exc)
    return {
        "error": {
            "message": error_message(exc, status, request_id), "type": kind, "param": encodable(exc.param),
            "code": exc.code, "request_id": request_id,
        }
    }


@dataclass(frozen=True)
class ErrorShape:
    """How one dialect writes errors.

    ``matches(path)`` says which request paths it answers for; ``body(exc, status,
    request_id)`` builds the body and ``schema`` is its JSON schema (its ``title`` names it in
    the OpenAPI document, see :mod:`pixelmill.api.openapi`); ``statuses`` overrides the table
    for the classes where the dialect's clients expect another code (e.g. 422 for invalid
    input), most specific first.
    """

    name: str
    matches: Callable[[str], bool]
    body: Callable[[errors.PixelmillError, int, str | None], Any]
    schema: Mapping[str, Any]
    statuses: Mapping[type[errors.PixelmillError], int] = field(default_factory=dict)
    media_type: str = "application/json"
    authenticate: str = 'Bearer realm="pixelmill"'  # the WWW-Authenticate challenge of a 401


OPENAI_SHAPE = ErrorShape(
    "openai", lambda path: True, lambda exc, status, request_id: error_body(exc, request_id), OPENAI_SCHEMA
)

PROBLEM_TITLES = {
    400: "Bad request", 401: "Unauthenticated", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
    408: "Request timeout", 409: "Conflict", 413: "Payload too large", 422: "Input validation failed",
    429: "Too many requests", 500: "Internal server error", 503: "Service unavailable", 504: "Timeout",
}
"""``title`` of a problem body per status (RFC 7807: the same for every occurrence)."""


def problem_body(exc: errors.PixelmillError, status: int, request_id: str | None) -> dict:
    """An RFC 7807 problem (``type``, ``title``, ``status``, ``detail``, ``instance``) as
    Replicate writes errors and its client reads them, plus pixelmill's ``param`` and
    ``request_id``; a 422 also lists the field in ``invalid_fields`` as Replicate does."""
    detail = error_message(exc, status, request_id)
    param = encodable(exc.param)
    if param and detail and param not in detail:
        # The policy words its messages with internal names ("n must be ..."): lead with the
        # wire name, since Replicate's client shows only the detail.
        detail = f"{param}: {detail}"
    body = {
        "type": f"urn:pixelmill:problem:{exc.code}",
        "title": PROBLEM_TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": f"urn:pixelmill:request:{request_id}" if request_id else None,
        "param": param,
        "request_id": request_id,
    }
    if status == 422:
        body["invalid_fields"] = [{"type": exc.code, "field": param, "description": detail}]
    return body


PROBLEM_SCHEMA = _object(
    "Problem", ["type", "title", "status", "detail"], type=_TEXT, title=_TEXT, status={"type": "integer"},
    detail=_OPTIONAL_TEXT, instance=_OPTIONAL_TEXT,
    invalid_fields={"type": "array", "items": {"type": "object"}},
)
"""The JSON schema of :func:`problem_body`."""


def mounted_at(prefix: str) -> Callable[[str], bool]:
    """A path matcher for a dialect mounted under ``prefix`` (the prefix itself included)."""
    return lambda path: path == prefix or path.startswith(f"{prefix}/")


REPLICATE_SHAPE = ErrorShape(
    "replicate", mounted_at(REPLICATE_PREFIX), problem_body, PROBLEM_SCHEMA,
    # Replicate answers invalid input with 422 (a body too large stays 413) and a cancel of a
    # finished prediction is not an error there (the router returns it as it is).
    statuses={errors.PayloadTooLarge: 413, errors.InvalidRequest: 422},
    media_type="application/problem+json",
)
"""The Replicate dialect's errors (mounted at ``/replicate``, see docs/replicate.md)."""


COG_PREFIX = "/cog"
"""Where Cog's local API is mounted (``/cog/predictions``): its ``/`` and ``/openapi.json``
would collide with pixelmill's at the root."""


def cog_body(exc: errors.PixelmillError, status: int, request_id: str | None) -> dict:
    """Cog's error body (FastAPI's ``{"detail": ...}``: a list of ``{loc, msg, type}`` for
    invalid input, else the message) plus pixelmill's ``param`` and ``request_id``."""
    message = error_message(exc, status, request_id)
    param = encodable(exc.param)
    detail: Any = message
    if status == 422 and param:
        detail = [{"loc": ["body", *param.split(".")], "msg": message, "type": exc.code}]
    return {"detail": detail, "param": param, "request_id": request_id}


COG_SCHEMA = _object(
    "CogError", ["detail"], detail={"anyOf": [_OPTIONAL_TEXT, {"type": "array", "items": {"type": "object"}}]}
)
"""The JSON schema of :func:`cog_body`."""


COG_SHAPE = ErrorShape(
    "cog", mounted_at(COG_PREFIX), cog_body, COG_SCHEMA,
    statuses={errors.PayloadTooLarge: 413, errors.InvalidRequest: 422},
)
"""The errors of Cog's local API (mounted at ``/cog``)."""


A1111_PREFIXES = ("/sdapi/", "/internal/", "/controlnet/")
"""Paths of the AUTOMATIC1111 dialect (mounted at the root, see docs/a1111.md)."""


def a1111_body(exc: errors.PixelmillError, status: int, request_id: str | None) -> dict:
    """A1111's error body (``{"error", "detail", "body", "errors"}``: exception type, message,
    and ``str(exc)``) plus pixelmill's ``param`` and ``request_id``."""
    message = error_message(exc, status, request_id)
    return {"error": type(exc).__name__, "detail": message, "body": "", "errors": f"{status}: {message}",
            "param": encodable(exc.param), "request_id": request_id}


A1111_SCHEMA = _object("A1111Error", ["error", "detail", "body", "errors"],
                       error=_TEXT, detail=_OPTIONAL_TEXT, body=_TEXT, errors=_TEXT)
"""The JSON schema of :func:`a1111_body`."""


A1111_SHAPE = ErrorShape(
    "a1111", lambda path: path.startswith(A1111_PREFIXES), a1111_body, A1111_SCHEMA,
    # A1111 answers invalid input with 422 (pydantic's validation, "Script not found", "always on
    # script not found"); a body too large stays 413.
    statuses={errors.PayloadTooLarge: 413, errors.InvalidRequest: 422},
    authenticate='Basic realm="pixelmill"',  # A1111 clients send --api-auth as HTTP Basic
)
"""The AUTOMATIC1111 dialect's errors."""


def shape_of_path(app: Any, path: str) -> ErrorShape:
    """The error shape of the dialect that serves ``path`` in ``app`` (its installed shapes in
    order; OpenAI's when none claims it). The one lookup, for responses and the OpenAPI document."""
    shapes: Sequence[ErrorShape] = getattr(getattr(app, "state", None), "error_shapes", ())
    return next((shape for shape in shapes if shape.matches(path)), OPENAI_SHAPE)


def shape_for(scope: Scope) -> ErrorShape:
    """The error shape of the dialect serving ``scope``'s path (OpenAI's when none claims it)."""
    return shape_of_path(scope.get("app"), scope.get("path", ""))


def error_response(
    exc: errors.PixelmillError, request_id: str | None, shape: ErrorShape = OPENAI_SHAPE, *, status: int | None = None
) -> JSONResponse:
    """The response for ``exc`` in ``shape``: status from the table (or ``status``), the dialect's body."""
    status = status or status_of(exc, shape)[0]
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, errors.Overloaded) else None
    if isinstance(exc, errors.Unauthorized):
        headers = {"WWW-Authenticate": shape.authenticate}  # RFC 6750/7617: say how to authenticate
    return JSONResponse(
        shape.body(exc, status, request_id), status_code=status, headers=headers, media_type=shape.media_type
    )


@contextlib.contextmanager
def wire_params(names: Mapping[str, str]) -> Iterator[None]:
    """Rename internal ``param`` names to a dialect's wire names on the way out."""
    try:
        yield
    except errors.PixelmillError as exc:
        if exc.param in names:
            exc.param = names[exc.param]
        raise


def param_of(loc: tuple | list) -> str | None:
    """A pydantic error location as the policy names parameters: ``loras[0].weight``."""
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    param = ""
    for part in loc:
        param += f"[{part}]" if isinstance(part, int) else f".{part}" if param else str(part)
    return param or None


def validation_error(details: list[dict]) -> errors.InvalidRequest:
    """The 400 for the first of pydantic's ``details``, in the same shape as the policy's
    (the wire models check types; the policy checks values, and both name the parameter)."""
    first = details[0] if details else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":  # loc is ("body", <offset>): not a parameter
        return errors.InvalidRequest("the body is not valid JSON", param=None)
    param = param_of(tuple(first.get("loc", ())))
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return errors.InvalidRequest(message, param=param)


def _validation_error(exc: RequestValidationError) -> errors.InvalidRequest:
    return validation_error(list(exc.errors()))


def install_error_handlers(app: FastAPI, shapes: Sequence[ErrorShape] = ()) -> None:
    """Route every exception through the table above, in the shape of the path's dialect
    (``shapes`` in order; OpenAI's envelope where none matches)."""
    app.state.error_shapes = tuple(shapes)

    @app.exception_handler(errors.PixelmillError)
    async def _pixelmill(request: Request, exc: errors.PixelmillError) -> JSONResponse:
        if status_of(exc)[0] >= 500:
            log.error("request %s failed: %s", request_id_of(request), exc.message)
        return error_response(exc, request_id_of(request), shape_for(request.scope))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc), request_id_of(request), shape_for(request.scope))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = errors.NotFound if exc.status_code == 404 else errors.InvalidRequest
        error = cls(str(exc.detail))
        response = error_response(error, request_id_of(request), shape_for(request.scope))
        response.status_code = exc.status_code
        response.headers.update(exc.headers or {})  # e.g. Allow on 405, as RFC 9110 requires
        if exc.status_code == 405:
            response.headers["Allow"] = _allowed_methods(request)
        return response


def _allowed_methods(request: Request) -> str:
    """Every method the path supports: Starlette's 405 names only the first matching route's."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.routes:
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))
