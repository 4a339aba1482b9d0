"""The OpenAPI schema, made to tell the truth about errors.

FastAPI documents a 422 ``HTTPValidationError`` for every route with parameters, but
pixelmill answers every error through one table (``api.errors``) with OpenAI's envelope
and 400 for invalid input. This replaces the 422 with the envelope for any 4xx and 5xx,
so clients (and the schemathesis fuzz test) can rely on the documented shapes; a
specific error status a route documents (``POST /v1/keys``: 409) gets the envelope too.

Limits on parameters are stated where the parameters are declared (``api.params``:
id patterns, a non-empty ``cursor``, ``since`` as ``date-time``), so the document and
the checks cannot disagree.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "string"},
                "request_id": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_METHODS = ("get", "post", "put", "patch", "delete")


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def truthful_openapi(app: FastAPI) -> dict[str, Any]:
    """``app``'s schema with the error envelope documented for 4XX/5XX (cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, description=app.description,
        routes=app.routes,
    )
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorResponse"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path in schema.get("paths", {}).values():
        for method in _METHODS:
            if method in path:
                responses = path[method].setdefault("responses", {})
                responses.pop("422", None)
                for code, response in responses.items():  # e.g. a route's documented 409
                    if code[0] in "45" and "content" not in response:
                        response["content"] = {"application/json": {"schema": _ERROR_REF}}
                responses["4XX"] = _error_response("Client error (400 invalid, 401 no key, 404, 413, 429 …)")
                responses["5XX"] = _error_response("Server error; quote the request_id")
    app.openapi_schema = schema
    return schema


def install(app: FastAPI) -> None:
    """Serve :func:`truthful_openapi` at ``/openapi.json``."""
    app.openapi = lambda: truthful_openapi(app)  # type: ignore[method-assign]
