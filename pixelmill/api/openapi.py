"""The OpenAPI schema, made to tell the truth about errors.

FastAPI documents a 422 ``HTTPValidationError`` for every route with parameters, but
pixelmill answers every error through one table (``api.errors``), in the body of the
dialect that serves the path: OpenAI's envelope by default, A1111's body under
``/sdapi``, ``/internal`` and ``/controlnet``, an RFC 7807 problem under ``/replicate``,
Cog's ``{"detail": ...}`` under ``/cog``. This replaces the 422 with that body for any 4xx
and 5xx of each route, found by the same lookup that renders the errors
(:func:`pixelmill.api.errors.shape_of_path`), with the schema its
:class:`~pixelmill.api.errors.ErrorShape` declares, so clients (and the schemathesis fuzz
test) can rely on the documented shapes; a specific error status a route documents
(``POST /v1/keys``: 409) gets the body too.

Limits on parameters are stated where the parameters are declared (``api.params``:
id patterns, a non-empty ``cursor``, ``since`` as ``date-time``), so the document and
the checks cannot disagree.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from pixelmill.api.errors import ErrorShape, shape_of_path

_METHODS = ("get", "post", "put", "patch", "delete")


def _content(shape: ErrorShape, schemas: dict[str, Any]) -> dict[str, Any]:
    """The ``content`` of an error response in ``shape``, its schema registered in ``schemas``."""
    name = shape.schema["title"]
    schemas[name] = copy.deepcopy(dict(shape.schema))  # the document is the app's to cache, not the shape's
    return {shape.media_type: {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def document_errors(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every operation's 4XX/5XX (and any error status it names) documented as
    the body of the error shape that serves its path in ``app``."""
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, operations in schema.get("paths", {}).items():
        content = _content(shape_of_path(app, path), schemas)
        for method in _METHODS:
            if method not in operations:
                continue
            responses = operations[method].setdefault("responses", {})
            responses.pop("422", None)  # invalid input: whichever status the dialect uses, within 4XX
            for code, response in responses.items():  # e.g. a route's documented 409
                if code[0] in "45" and "content" not in response:
                    response["content"] = content
            responses["4XX"] = {"description": "Client error (invalid input, 401 no key, 404, 413, 429 …)",
                                "content": content}
            responses["5XX"] = {"description": "Server error; quote the request_id", "content": content}
    return schema


def truthful_openapi(app: FastAPI) -> dict[str, Any]:
    """``app``'s schema with each dialect's error body documented for 4XX/5XX (cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, description=app.description,
        routes=app.routes,
    )
    app.openapi_schema = document_errors(app, schema)
    return app.openapi_schema


def install(app: FastAPI) -> None:
    """Serve :func:`truthful_openapi` at ``/openapi.json``."""
    app.openapi = lambda: truthful_openapi(app)  # type: ignore[method-assign]
