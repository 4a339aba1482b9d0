"""The error table and envelope, exercised through the real app in-process."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pixelmill.core import errors
from pixelmill.server import build_app
from pixelmill.api.errors import (A1111_SHAPE, COG_SHAPE, OPENAI_SHAPE, REPLICATE_SHAPE, STATUS_TABLE,
                                  shape_of_path, status_of)
from pixelmill.settings import Settings


@pytest.fixture()
def app(tmp_path):
    # The app is built but its lifespan is not run: the engine never starts, so the
    # server is "loading" — exactly the state these tests need.
    application = build_app(Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data"))

    @application.get("/boom")
    async def boom():
        raise RuntimeError("secret at /home/user/.cache with key sk-123")

    return application


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.InvalidRequest("x"), 400),
        (errors.PayloadTooLarge("x"), 413),
        (errors.NotFound("x"), 404),
        (errors.Unauthorized("x"), 401),
        (errors.Overloaded("x"), 429),
        (errors.ModelUnavailable("x"), 503),
        (errors.GenerationFailed("x"), 500),
        (errors.WaitTimeout("x"), 504),
        (errors.PixelmillError("x"), 500),
    ],
)
def test_status_table(exc, status):
    assert status_of(exc)[0] == status


def test_every_public_error_class_has_a_row():
    classes = {cls for cls, _, _ in STATUS_TABLE}
    public = {cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.PixelmillError)}
    assert public <= classes


def test_unexpected_error_is_500_with_request_id_and_no_details(app):
    response = call(app, "GET", "/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    rid = response.headers["x-request-id"]
    assert error["request_id"] == rid and rid in error["message"]
    for leak in ("Traceback", "/home/user", "sk-123", "RuntimeError"):
        assert leak not in response.text


def test_jobs_are_accepted_while_the_model_loads(app):
    # Durable jobs: a submission is committed and waits in the queue for the engine.
    response = call(app, "POST", "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64})
    assert response.status_code == 202
    assert response.json()["status"] == "queued" and response.json()["queue_position"] == 1


def test_health_is_503_while_loading(app):
    response = call(app, "GET", "/health")
    assert response.status_code == 503
    assert response.json()["status"] == "loading"


def test_declared_oversized_json_is_refused_before_reading(app):
    response = call(
        app, "POST", "/v1/images/generations",
        content=b"{}", headers={"content-type": "application/json", "content-length": str(2 << 20)},
    )
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "body"


def test_streamed_oversized_body_is_refused(app):
    async def chunks():
        for _ in range(40):
            yield b"x" * 65536

    response = call(app, "POST", "/v1/images/generations", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_malformed_json_is_400(app):
    response = call(app, "POST", "/v1/images/generations", content=b"{", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_is_404_envelope(app):
    response = call(app, "GET", "/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_full_queue_is_429_with_retry_after_and_stores_nothing(tmp_path):
    settings = Settings(models_dir=tmp_path / "m", data_dir=tmp_path / "d", workers=0, max_queued=3)
    application = build_app(settings)
    body = {"prompt": "x", "width": 64, "height": 64}
    for _ in range(3):
        assert call(application, "POST", "/v1/jobs", json=body).status_code == 202
    refused = call(application, "POST", "/v1/jobs", json=body)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "overloaded"
    listed = call(application, "GET", "/v1/jobs").json()["data"]
    assert len(listed) == 3
    batch = call(application, "POST", "/v1/batches", json={"request": body, "seeds": {"count": 2}})
    assert batch.status_code == 429


def _conforms(value, schema: dict) -> bool:
    """``value`` fits ``schema`` (the subset the error shapes use: type, anyOf, required, properties)."""
    if "anyOf" in schema:
        return any(_conforms(value, option) for option in schema["anyOf"])
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    python = {"string": str, "integer": int, "object": dict, "array": list, "null": type(None)}
    if kinds and not any(isinstance(value, python[kind]) for kind in kinds):
        return False
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return set(schema.get("required", [])) <= set(value) and all(
            _conforms(item, properties[key]) for key, item in value.items() if key in properties)
    return True


SHAPES = [OPENAI_SHAPE, A1111_SHAPE, REPLICATE_SHAPE, COG_SHAPE]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
@pytest.mark.parametrize("exc", [
    errors.InvalidRequest("steps must be at most 150", param="steps"), errors.Unauthorized("no key"),
    errors.NotFound("no such job"), errors.WaitTimeout("did not finish"), errors.PixelmillError("boom"),
], ids=lambda exc: type(exc).__name__)
def test_each_shape_writes_what_its_schema_documents(shape, exc):
    body = shape.body(exc, status_of(exc, shape)[0], "rid")
    assert _conforms(body, shape.schema), (shape.name, body)
    assert not _conforms({"unrelated": True}, shape.schema)  # the schema does say something


def test_openapi_documents_each_route_errors_in_the_shape_that_serves_it(app):
    document = call(app, "GET", "/openapi.json").json()
    expected = {"/v1/images/generations": ("application/json", "ErrorResponse"),
                "/sdapi/v1/txt2img": ("application/json", "A1111Error"),
                "/controlnet/version": ("application/json", "A1111Error"),
                "/replicate/v1/predictions": ("application/problem+json", "Problem"),
                "/cog/predictions": ("application/json", "CogError")}
    assert set(expected) <= set(document["paths"])  # the A1111 routes are documented too
    for path, operations in document["paths"].items():
        shape = shape_of_path(app, path)  # the lookup that renders the errors; checked above on a few
        media_type, name = expected.get(path) or (shape.media_type, shape.schema["title"])
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            for code in [code for code in responses if code[0] in "45"] + ["4XX", "5XX"]:
                assert responses[code]["content"] == {
                    media_type: {"schema": {"$ref": f"#/components/schemas/{name}"}}}, (method, path, code)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    for shape in SHAPES:
        assert schemas[shape.schema["title"]] == shape.schema
    # A route's own error status (a key name taken) is documented with the body too.
    assert "content" in document["paths"]["/v1/keys"]["post"]["responses"]["409"]
