"""Translation of A1111 bodies into the one internal request: what maps, what is refused."""

from __future__ import annotations

import base64

import pytest
from PIL import Image

from pixelmill.api.a1111.protocol import Caller, Img2ImgRequest, Txt2ImgRequest
from pixelmill.core.errors import InvalidRequest, NotFound
from pixelmill.core.policy import resolve
from pixelmill.core.types import Mode
from pixelmill.images.codecs import open_png
from pixelmill.settings import Settings
from tests.support.images import gradient, png_bytes

CALLER = Caller()


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("a1111")
    return Settings(models_dir=root / "models", data_dir=root / "data", default_mask_blur=6)


def b64(image: Image.Image, *, data_url: bool = False) -> str:
    text = base64.b64encode(png_bytes(image)).decode()
    return f"data:image/png;base64,{text}" if data_url else text


def test_txt2img_fields_map_and_nulls_mean_defaults(settings):
    body = Txt2ImgRequest.model_validate({
        "prompt": "a cat", "negative_prompt": None, "seed": 7, "batch_size": 2, "n_iter": 3, "steps": 12,
        "cfg_scale": 6.5, "width": 64, "height": 96, "sampler_name": "DPM++ 2M", "scheduler": "karras",
        "styles": None, "subseed": None, "save_images": None, "restore_faces": None, "enable_hr": False,
        "url": "http://sillytavern.local", "auth": "x",  # SillyTavern's own keys: ignored, as A1111 does
        "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic"},
    })
    request = body.to_request(settings, CALLER)
    assert (request.mode, request.prompt, request.negative_prompt) == (Mode.txt2img, "a cat", "")
    assert (request.seed, request.n, request.steps, request.guidance) == (7, 6, 12, 6.5)
    assert (request.width, request.height) == (64, 96)
    assert (request.scheduler, request.clip_skip) == ("dpmpp_2m_karras", 1)


def test_left_out_values_stay_unset_for_the_policy(settings):
    request = Txt2ImgRequest(prompt="a cat").to_request(settings, CALLER)
    assert request.steps is None and request.guidance is None and request.width is None
    assert request.scheduler == "euler"  # A1111's API runs Euler when no sampler is named
    assert request.seed == -1 and request.clip_skip is None
    resolved = resolve(request, settings.policy())
    assert resolved.steps == settings.default_steps


def test_negative_seed_is_random(settings):
    assert Txt2ImgRequest(prompt="x", seed=-5).to_request(settings, CALLER).seed == -1


@pytest.mark.parametrize(("body", "param"), [
    ({"enable_hr": True}, "enable_hr"),
    ({"restore_faces": True}, "restore_faces"),
    ({"tiling": True}, "tiling"),
    ({"script_name": "x/y/z plot"}, "script_name"),
    ({"infotext": "a cat\nSteps: 20"}, "infotext"),
    ({"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "alwayson_scripts.ADetailer"),
    ({"override_settings": {"sd_vae": "vae-ft-mse.safetensors"}}, "override_settings.sd_vae"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 40}}, "override_settings.CLIP_stop_at_last_layers"),
    ({"scheduler": "Wobbly"}, "scheduler"),
    ({"steps": True}, "steps"),
    ({"alwayson_scripts": {"controlnet": {"args": [{"module": "openpose", "model": "x", "image": "AA=="}]}}},
     "alwayson_scripts.ControlNet.args[0].module"),
])
def test_unsupported_or_bad_fields_are_refused_naming_them(settings, body, param):
    with pytest.raises((InvalidRequest, ValueError)) as raised:
        Txt2ImgRequest.model_validate({"prompt": "a cat", **body}).to_request(settings, CALLER)
    if isinstance(raised.value, InvalidRequest):
        assert raised.value.param == param
    else:  # pydantic's own type check: the route turns it into a 422 naming the field
        assert param in str(raised.value)


def test_unknown_sampler_is_not_found(settings):
    with pytest.raises(NotFound, match="Sampler not found"):
        Txt2ImgRequest(prompt="x", sampler_name="Nope").to_request(settings, CALLER)


def test_empty_controlnet_args_and_disabled_units_add_nothing(settings):
    body = {"prompt": "x", "alwayson_scripts": {"ControlNet": {"args": [{"enabled": False}]}}}
    assert Txt2ImgRequest.model_validate(body).to_request(settings, CALLER).controlnets == ()


def test_controlnet_unit_translates(settings):
    unit = {"image": b64(gradient(32, 32)), "module": "canny", "model": "control_canny [d14c016b]",
            "weight": 0.8, "guidance_start": 0.1, "guidance_end": 0.9, "pixel_perfect": True, "enabled": True}
    body = {"prompt": "x", "alwayson_scripts": {"ControlNet": {"args": [unit]}}}
    (control,) = Txt2ImgRequest.model_validate(body).to_request(settings, CALLER).controlnets
    assert (control.name, control.scale, control.start, control.end, control.preprocess.value) == (
        "control_canny", 0.8, 0.1, 0.9, "canny")


def test_model_comes_from_override_then_the_callers_option(settings):
    seen = []

    def checkpoint(title: str, param: str) -> str:
        seen.append(param)
        return title.upper()

    caller = Caller(options={"sd_model_checkpoint": "mine"}, checkpoint=checkpoint)
    assert Txt2ImgRequest(prompt="x").to_request(settings, caller).model == "MINE"
    body = Txt2ImgRequest(prompt="x", override_settings={"sd_model_checkpoint": "other"})
    assert body.to_request(settings, caller).model == "OTHER"
    assert seen == ["sd_model_checkpoint", "override_settings.sd_model_checkpoint"]


def test_img2img_without_init_image_is_init_image_not_found(settings):
    with pytest.raises(InvalidRequest, match="Init image not found") as raised:
        Img2ImgRequest(prompt="x").to_request(settings, CALLER)
    assert raised.value.param == "init_images"


def test_img2img_takes_a_data_url_and_sizes_the_image(settings):
    body = Img2ImgRequest(prompt="x", init_images=[b64(gradient(80, 40), data_url=True)], width=64, height=64,
                          resize_mode=1, denoising_strength=0.4)
    request, crop = body.to_request(settings, CALLER)
    assert (request.mode, request.strength, crop) == (Mode.img2img, 0.4, None)
    assert open_png(request.init_image).size == (64, 64)
    assert body.echo()["init_images"] is None  # nulled unless include_init_images, as A1111


def test_inpaint_with_a1111_defaults(settings):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 32, 32))
    body = Img2ImgRequest(prompt="x", init_images=[b64(gradient(64, 64))], mask=b64(mask), width=64,
                          height=64)
    request, crop = body.to_request(settings, CALLER)
    assert request.mode is Mode.inpaint and crop is not None  # inpaint_full_res defaults to true
    assert crop.blur == 6 and request.mask_blur is None  # unset: the server's default mask blur
    assert crop.box == (16, 16, 32, 32)  # padding 0: just the mask's box
    padded, crop = body.model_copy(update={"inpaint_full_res_padding": 8}).to_request(settings, CALLER)
    assert crop.box == (8, 8, 40, 40) and open_png(padded.mask_image).getextrema() == (0, 255)


@pytest.mark.parametrize(("body", "param"), [
    ({"inpainting_fill": 2}, "inpainting_fill"),
    ({"resize_mode": 3}, "resize_mode"),
    ({"init_images": ["https://example.com/cat.png"]}, "init_images[0]"),
    ({"init_images": ["not base64!"]}, "init_images[0]"),
    ({"mask": None, "latent_mask": "AA=="}, "latent_mask"),
    ({"inpainting_mask_invert": 1, "mask": "WHITE"}, "mask"),
])
def test_img2img_refusals_name_the_field(settings, body, param):
    white = b64(Image.new("L", (64, 64), 255))
    fields = {"prompt": "x", "init_images": [b64(gradient(64, 64))], "mask": white, **body}
    if fields["mask"] == "WHITE":
        fields["mask"] = white  # all white, inverted: nothing left to repaint
    with pytest.raises(InvalidRequest) as raised:
        Img2ImgRequest.model_validate(fields).to_request(settings, CALLER)
    assert raised.value.param == param
