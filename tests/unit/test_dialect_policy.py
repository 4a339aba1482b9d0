"""Both dialects go through the one request policy: wire models translate only, the
policy fills defaults (from the settings) and sizes, and the job keeps the result."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from PIL import Image

from pixelmill.api.errors import wire_params
from pixelmill.api.native.protocol import PARAM_NAMES as NATIVE_NAMES
from pixelmill.api.native.protocol import GenerationCreate
from pixelmill.api.openai.protocol import PARAM_NAMES as OPENAI_NAMES
from pixelmill.api.openai.protocol import ImageEditForm, ImageGenerationCreate, ImageVariationForm
from pixelmill.core.errors import InvalidRequest
from pixelmill.core.types import Mode
from pixelmill.jobs.notify import Notifier
from pixelmill.jobs.service import JobService, ModelCatalog
from pixelmill.jobs.store import JobStore
from pixelmill.registry.models_dir import ModelRegistry
from pixelmill.settings import Settings
from tests.support.images import png_bytes

# Not the built-in defaults, so a value that arrives can only have come from here.
SETTINGS = dict(model="demo", default_steps=7, default_guidance=3.5, default_strength=0.55,
                default_mask_blur=9)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data", **SETTINGS)


@pytest.fixture
def service(settings, tmp_path):
    store = JobStore.open(str(tmp_path / "jobs.db"))
    yield JobService(settings, store, ModelCatalog(settings, ModelRegistry(settings.models_dir)), Notifier())
    store.engine.dispose()


def big_png() -> bytes:
    """A 3000×3000 upload (one colour, so a few kilobytes)."""
    return png_bytes(Image.new("RGB", (3000, 3000), (30, 90, 160)))


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_native_img2img_upload_without_size_is_fitted(service, settings):
    body = GenerationCreate(mode=Mode.img2img, prompt="a boat", image=data_url(big_png()))
    prepared = service.prepare(body.to_request(settings))
    assert (prepared.width, prepared.height) == (2048, 2048)


def test_openai_variation_and_edit_uploads_without_size_are_fitted(service, settings):
    upload = big_png()
    variation = service.prepare(ImageVariationForm().to_request(settings, upload))
    edit = service.prepare(ImageEditForm(prompt="a boat").to_request(settings, upload, upload))
    assert (variation.width, variation.height) == (edit.width, edit.height) == (2048, 2048)
    assert variation.strength == settings.variation_strength  # the endpoint's own setting
    assert edit.strength == 1.0  # OpenAI edits repaint the masked area


@pytest.mark.parametrize(
    ("to_request", "names"),
    [
        (lambda s: GenerationCreate(prompt="x", steps=0).to_request(s), NATIVE_NAMES),
        (lambda s: ImageGenerationCreate(prompt="x", steps=0).to_request(s), OPENAI_NAMES),
        (lambda s: ImageGenerationCreate(prompt="x", steps=0, quality="high").to_request(s), OPENAI_NAMES),
    ],
)
def test_steps_zero_is_refused_naming_steps(service, settings, to_request, names):
    request = to_request(settings)
    assert request.steps == 0  # passed through, not replaced by a default
    with pytest.raises(InvalidRequest) as caught, wire_params(names):
        service.prepare(request)
    assert caught.value.param == "steps"


def test_wire_models_leave_defaults_unset(settings):
    native = GenerationCreate(prompt="x").to_request(settings)
    openai = ImageGenerationCreate(prompt="x").to_request(settings)
    for request in (native, openai):
        assert (request.steps, request.guidance, request.strength, request.mask_blur) == (None,) * 4
    assert ImageGenerationCreate(prompt="x", quality="high").to_request(settings).steps == 40
    assert ImageGenerationCreate(prompt="x", quality="high", steps=9).to_request(settings).steps == 9


def test_the_stored_request_has_every_default_from_the_settings(service, settings):
    image, mask = (png_bytes(Image.new("RGB", (100, 72), colour)) for colour in ("black", "white"))
    body = GenerationCreate(mode=Mode.inpaint, prompt="a boat", model="dall-e-3", image=data_url(image),
                            mask=data_url(mask), scheduler="DPM++ 2M Karras")
    job, _ = asyncio.run(service.submit(body.to_request(settings)))
    stored = service.store.get(job.id).request
    assert (stored.steps, stored.guidance, stored.strength, stored.mask_blur) == (7, 3.5, 0.55, 9)
    assert (stored.width, stored.height) == (96, 72)
    assert stored.model == "demo" and stored.scheduler == "dpmpp_2m_karras"
    assert (job.width, job.height, job.steps) == (96, 72, 7)


# --- issue 19 §7/§8 at the wire: strict numbers, text, one error shape, the schema ---------

NATIVE_INTS = ["n", "steps", "seed", "width", "height", "clip_skip", "mask_blur", "output_quality"]
OPENAI_INTS = ["n", "steps", "seed", "clip_skip", "output_compression"]


@pytest.fixture
def app(settings):
    from pixelmill.server import build_app

    # No lifespan: no worker runs, so nothing is generated; a valid synchronous call would
    # wait, which is why only refusals go through the app here.
    return build_app(settings.model_copy(update={"workers": 0, "sync_timeout_s": 0.05}))


def call(app, path: str, **kwargs):
    import httpx

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, **kwargs)

    return asyncio.run(go())


def refused(response, param: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    return error["message"]


def job_count(app) -> int:
    return len(app.state.services.store.list_jobs(limit=10)[0])


@pytest.mark.parametrize(("path", "field"), [*(("/v1/jobs", f) for f in NATIVE_INTS + ["guidance", "strength"]),
                                             *(("/v1/images/generations", f) for f in OPENAI_INTS + ["guidance"])])
def test_a_json_boolean_is_not_a_number(app, path, field):
    """Lax pydantic read ``n: true`` as 1; now each numeric field refuses it by name."""
    body = {"prompt": "a cat", "width": 64, "height": 64} if path == "/v1/jobs" else {"prompt": "a cat"}
    message = refused(call(app, path, json=body | {field: True}), field)
    assert "boolean" in message
    assert job_count(app) == 0


def test_numbers_keep_working_as_json_integers_and_whole_floats():
    body = GenerationCreate.model_validate({"prompt": "x", "n": 2, "steps": 3.0, "seed": 4294967295.0,
                                            "guidance": 7, "loras": [{"name": "a", "weight": 1}]})
    assert (body.n, body.steps, body.seed, body.guidance) == (2, 3, 4294967295, 7.0)
    assert type(body.steps) is int and type(body.guidance) is float
    assert ImageGenerationCreate.model_validate({"prompt": "x", "n": 2.0}).n == 2
    for bad in ({"n": 2.5}, {"n": "2"}, {"guidance": "7"}, {"seed": None}):
        with pytest.raises(ValueError):
            ImageGenerationCreate.model_validate({"prompt": "x"} | bad)


def test_multipart_forms_still_send_numbers_as_text():
    """The openai SDK sends form fields as str(value) (and True as "true")."""
    form = ImageEditForm.model_validate({"prompt": "x", "n": "2", "seed": "-1", "steps": "3.0", "mask_blur": "4",
                                         "strength": "0.5", "guidance": "7", "output_compression": "80"})
    assert (form.n, form.seed, form.steps, form.mask_blur, form.strength, form.guidance) == (2, -1, 3, 4, 0.5, 7.0)
    assert ImageVariationForm.model_validate({"n": "3", "strength": "1"}).n == 3
    for field, text in (("n", "true"), ("n", "2.5"), ("steps", ""), ("strength", "nan"), ("seed", "0x10")):
        with pytest.raises(ValueError) as caught:
            ImageEditForm.model_validate({"prompt": "x", field: text})
        assert caught.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize(("path", "field"), [("/v1/jobs", "prompt"), ("/v1/jobs", "negative_prompt"),
                                             ("/v1/images/generations", "prompt"),
                                             ("/v1/images/generations", "negative_prompt")])
def test_a_lone_surrogate_is_400_naming_the_field_and_queues_nothing(app, path, field):
    body = '{"prompt": "a cat", "width": 64, "height": 64, "%s": "a \\ud800 b"}' % field
    if path != "/v1/jobs":
        body = '{"prompt": "a cat", "%s": "\\udfff"}' % field
    response = call(app, path, content=body, headers={"content-type": "application/json"})
    assert "surrogate" in refused(response, field)
    assert job_count(app) == 0


@pytest.mark.parametrize(("path", "body", "param", "expected"), [
    ("/v1/jobs", {"n": 11}, "n", "n must be between 1 and 10, got 11"),
    ("/v1/jobs", {"steps": 151}, "steps", "steps must be between 1 and 150, got 151"),
    ("/v1/jobs", {"seed": 99_999_999_999}, "seed", "seed must be between 0 and 4294967295, got 99999999999"),
    ("/v1/jobs", {"strength": 1.5}, "strength", "strength must be between 0 and 1, got 1.5"),
    ("/v1/images/generations", {"n": 0}, "n", "n must be between 1 and 10, got 0"),
    ("/v1/images/generations", {"guidance": 31}, "guidance", "guidance must be between 0 and 30, got 31"),
    ("/v1/images/generations", {"prompt": ""}, "prompt", "prompt must not be empty"),
])
def test_out_of_range_values_get_the_policys_400(app, path, body, param, expected):
    """The schema documents the ranges; the policy alone enforces them (one message shape)."""
    base = {"prompt": "a cat", "width": 64, "height": 64} if path == "/v1/jobs" else {"prompt": "a cat"}
    assert refused(call(app, path, json=base | body), param) == expected


def test_validation_errors_name_nested_parameters_like_the_policy(app):
    body = {"prompt": "a cat", "width": 64, "height": 64, "loras": [{"name": "a", "weight": True}]}
    refused(call(app, "/v1/jobs", json=body), "loras[0].weight")
    assert refused(call(app, "/v1/jobs", content=b'{"prompt": ', headers={"content-type": "application/json"}),
                   None) == "the body is not valid JSON"


def test_the_openapi_schema_states_the_default_limits(app):
    schemas = app.openapi()["components"]["schemas"]
    openai, native = schemas["ImageGenerationCreate"]["properties"], schemas["GenerationCreate"]["properties"]
    assert (openai["prompt"]["minLength"], openai["prompt"]["maxLength"]) == (1, 4000)
    assert "minLength" not in native["prompt"]  # img2img and inpaint may leave it empty
    assert native["prompt"]["maxLength"] == native["negative_prompt"]["maxLength"] == 4000
    for props in (openai, native):
        assert (props["n"]["minimum"], props["n"]["maximum"]) == (1, 10)
        assert (props["steps"]["minimum"], props["steps"]["maximum"]) == (1, 150)
        assert (props["guidance"]["minimum"], props["guidance"]["maximum"]) == (0, 30)
        assert (props["seed"]["minimum"], props["seed"]["maximum"]) == (-1, 2**32 - 1)
    assert (native["strength"]["minimum"], native["strength"]["maximum"]) == (0, 1)


def test_an_unset_refiner_switch_point_reaches_the_policy_unset(settings):
    from pixelmill.core.policy import resolve

    for body in (GenerationCreate(prompt="x", refiner={"name": "r"}),
                 ImageGenerationCreate(prompt="x", refiner={"name": "r"})):
        request = body.to_request(settings)
        assert request.refiner.switch_at is None  # translated, not defaulted
        policy = settings.model_copy(update={"refiner_switch_at": 0.7}).policy()
        assert resolve(request, policy).refiner.switch_at == 0.7
    given = GenerationCreate(prompt="x", refiner={"name": "r", "switch_at": 0.6}).to_request(settings)
    assert given.refiner.switch_at == 0.6


def test_an_error_echoing_a_surrogate_still_renders():
    """Any error that quotes client text (a name, a loc) must not turn into a 500 itself."""
    from pixelmill.api.errors import error_response

    response = error_response(InvalidRequest("no model 'a\ud800'", param="x\udfff"), "rid")
    body = json.loads(response.body)
    assert response.status_code == 400
    assert body["error"]["message"] == "no model 'a\\ud800'" and body["error"]["param"] == "x\\udfff"
