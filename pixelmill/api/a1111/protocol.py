"""A1111 ``txt2img``/``img2img`` bodies and their translation to :class:`GenerationRequest`.

A1111's own models ignore unknown keys and clients send explicit ``null`` for many
optional fields, so both are accepted: a null is "A1111's default". Fields that only tune
A1111's UI or its saving (``save_images``, ``do_not_save_*``, ``styles``, ``subseed*``,
``eta``, ``s_*``) are accepted and have no effect; a feature pixelmill cannot run
(``enable_hr: true``, ``restore_faces: true``, ``tiling: true``, a ``script_name``, an
always-on script other than ControlNet, a latent fill …) is a 422 naming the field, never
silently dropped. Values left out stay unset and the request policy fills the server's
defaults (steps, CFG scale, size, denoising strength, mask blur), as for every dialect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from pixelmill.api.a1111.controlnet import control_specs
from pixelmill.api.a1111.images import RESIZE_MODES, Crop, img2img_inputs
from pixelmill.api.a1111.samplers import resolve_sampler
from pixelmill.api.adapters_wire import WireFloat, WireInt
from pixelmill.api.native.protocol import decode_base64_image
from pixelmill.core.errors import InvalidRequest
from pixelmill.core.types import RANDOM_SEED, GenerationRequest, Mode, RefinerSpec
from pixelmill.images.codecs import reencode_png
from pixelmill.settings import Settings

DEFAULT_SAMPLER = "Euler"
"""A1111's API runs ``Euler`` when a body names no sampler (its ``sampler_index`` default)."""
CLIP_SKIP = "CLIP_stop_at_last_layers"
CHECKPOINT = "sd_model_checkpoint"
AUTOMATIC_VAES = {"", "automatic", "none", "auto"}

PARAM_NAMES = {
    "n": "batch_size",
    "guidance": "cfg_scale",
    "strength": "denoising_strength",
    "init_image": "init_images",
    "mask_image": "mask",
    "scheduler": "sampler_name",
    "model": f"override_settings.{CHECKPOINT}",
    "clip_skip": f"override_settings.{CLIP_SKIP}",
    "refiner": "refiner_checkpoint",
    "refiner.name": "refiner_checkpoint",
    "refiner.switch_at": "refiner_switch_at",
    **{f"controlnets[{i}].{part}": f"alwayson_scripts.ControlNet.args[{i}].{wire}"
       for i in range(8)
       for part, wire in (("name", "model"), ("scale", "weight"), ("start", "guidance_start"),
                          ("end", "guidance_end"), ("image", "image"))},
}
"""Internal field → A1111 wire parameter, for error bodies."""


@dataclass(frozen=True)
class Caller:
    """What a translation needs beyond the body: the caller's options (``POST /options``) and
    how a checkpoint title becomes a model name (None: the server's default model)."""

    options: dict[str, Any] = field(default_factory=dict)
    checkpoint: Callable[[str, str], str | None] = lambda title, param: title


def clip_skip(value: Any, param: str) -> int | None:
    """A1111's ``CLIP_stop_at_last_layers`` N as diffusers' ``clip_skip`` (N - 1; None for 1 or unset).

    A1111 counts the last CLIP layer as 1, diffusers the layers skipped; anything but a whole
    number from 1 to 13 is refused naming ``param``.
    """
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or value != int(value) or not 1 <= value <= 13:
        raise InvalidRequest(f"{param} must be a whole number from 1 to 13, got {value!r}", param=param)
    return int(value) - 1 or None


class _Generation(BaseModel):
    """Fields txt2img and img2img share (``modules/api/models.py``, ``processing.py``)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: WireInt | None = RANDOM_SEED
    subseed: WireInt | None = RANDOM_SEED
    subseed_strength: WireFloat | None = 0.0
    seed_resize_from_h: WireInt | None = -1
    seed_resize_from_w: WireInt | None = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: WireInt | None = 1
    n_iter: WireInt | None = 1
    steps: WireInt | None = None
    cfg_scale: WireFloat | None = None
    width: WireInt | None = None
    height: WireInt | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: WireFloat | None = None
    s_min_uncond: WireFloat | None = None
    s_churn: WireFloat | None = None
    s_tmax: WireFloat | None = None
    s_tmin: WireFloat | None = None
    s_noise: WireFloat | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: WireFloat | None = None
    infotext: str | None = None
    script_name: str | None = None
    script_args: list[Any] | None = None
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = None
    force_task_id: str | None = None

    def _check_supported(self) -> None:
        """422 for each feature pixelmill cannot run, naming the field."""
        for name, what in (("restore_faces", "face restoration"), ("tiling", "tiling")):
            if getattr(self, name):
                raise InvalidRequest(f"{name}: {what} is not supported by this server; send false",
                                     param=name)
        if self.script_name:
            raise InvalidRequest(f"script_name: Script '{self.script_name}' not found (this server runs no "
                                 "selectable scripts)", param="script_name")
        if self.infotext:
            raise InvalidRequest("infotext: applying an infotext is not supported; send the fields "
                                 "themselves", param="infotext")
        vae = (self.override_settings or {}).get("sd_vae")
        if vae is not None and str(vae).strip().lower() not in AUTOMATIC_VAES:
            raise InvalidRequest(f"override_settings.sd_vae: choosing a VAE ({vae!r}) is not supported; "
                                 "the model's own VAE is used (send 'Automatic')",
                                 param="override_settings.sd_vae")
        for name in self.alwayson_scripts or {}:
            if name.strip().lower() != "controlnet":
                raise InvalidRequest(f"always on script {name} not found", param=f"alwayson_scripts.{name}")

    def _controlnet_args(self) -> list[Any]:
        for name, entry in (self.alwayson_scripts or {}).items():
            if name.strip().lower() == "controlnet":
                args = entry.get("args", []) if isinstance(entry, dict) else None
                if not isinstance(args, list):
                    raise InvalidRequest("alwayson_scripts.ControlNet must be {\"args\": [unit, ...]}",
                                         param=f"alwayson_scripts.{name}")
                return args
        return []

    def _model(self, caller: Caller) -> str | None:
        override = (self.override_settings or {}).get(CHECKPOINT)
        if override:
            return caller.checkpoint(str(override), f"override_settings.{CHECKPOINT}")
        chosen = caller.options.get(CHECKPOINT)
        return caller.checkpoint(str(chosen), CHECKPOINT) if chosen else None

    def _clip_skip(self, caller: Caller) -> int | None:
        overrides = self.override_settings or {}
        if CLIP_SKIP in overrides:
            return clip_skip(overrides[CLIP_SKIP], f"override_settings.{CLIP_SKIP}")
        return clip_skip(caller.options.get(CLIP_SKIP), CLIP_SKIP)

    def _seed(self) -> int:
        # A1111 reads any negative seed (and null) as "random"; pixelmill's random is -1.
        return RANDOM_SEED if self.seed is None or self.seed < 0 else self.seed

    def _base_fields(self, settings: Settings, caller: Caller) -> dict[str, Any]:
        self._check_supported()
        sampler = self.sampler_name or self.sampler_index or DEFAULT_SAMPLER
        scheduler, _, _ = resolve_sampler(sampler, self.scheduler)
        refiner = None
        if self.refiner_checkpoint and self.refiner_checkpoint.strip().lower() not in ("", "none"):
            name = caller.checkpoint(self.refiner_checkpoint, "refiner_checkpoint")
            if name is None:
                raise InvalidRequest("refiner_checkpoint names the model that already runs",
                                     param="refiner_checkpoint")
            refiner = RefinerSpec(name=name, switch_at=self.refiner_switch_at)
        return {
            "prompt": self.prompt or "",
            "negative_prompt": self.negative_prompt or "",
            "model": self._model(caller),
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "guidance": self.cfg_scale,
            "seed": self._seed(),
            "n": (1 if self.batch_size is None else self.batch_size)
            * (1 if self.n_iter is None else self.n_iter),
            "scheduler": scheduler,
            "clip_skip": self._clip_skip(caller),
            "refiner": refiner,
            "controlnets": control_specs(self._controlnet_args(), settings),
        }

    def echo(self) -> dict[str, Any]:
        """The body as A1111 echoes it in ``parameters`` (its fields, A1111's defaults filled)."""
        return self.model_dump(mode="json")


class Txt2ImgRequest(_Generation):
    """Body of ``POST /sdapi/v1/txt2img``."""

    enable_hr: bool | None = False
    denoising_strength: WireFloat | None = None
    firstphase_width: WireInt | None = 0
    firstphase_height: WireInt | None = 0
    hr_scale: WireFloat | None = None
    hr_upscaler: str | None = None
    hr_second_pass_steps: WireInt | None = None
    hr_resize_x: WireInt | None = None
    hr_resize_y: WireInt | None = None
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = None
    hr_negative_prompt: str | None = None

    def to_request(self, settings: Settings, caller: Caller) -> GenerationRequest:
        """The txt2img request (``settings``: limits on decoded ControlNet images)."""
        if self.enable_hr:
            raise InvalidRequest("enable_hr: the hires. fix second pass is not supported; send false "
                                 "and ask for the final width and height", param="enable_hr")
        return GenerationRequest(mode=Mode.txt2img, **self._base_fields(settings, caller))


class Img2ImgRequest(_Generation):
    """Body of ``POST /sdapi/v1/img2img`` (img2img, or inpaint when it has a ``mask``)."""

    init_images: list[str] | None = None
    resize_mode: WireInt | None = 0
    denoising_strength: WireFloat | None = None
    image_cfg_scale: WireFloat | None = None
    mask: str | None = None
    mask_blur: WireInt | None = None
    mask_blur_x: WireInt | None = None
    mask_blur_y: WireInt | None = None
    mask_round: bool | None = True
    inpainting_fill: WireInt | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: WireInt | None = 0
    inpainting_mask_invert: WireInt | None = 0
    initial_noise_multiplier: WireFloat | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = False

    def to_request(self, settings: Settings, caller: Caller) -> tuple[GenerationRequest, Crop | None]:
        """The img2img or inpaint request, and where an "only masked" result goes back (blocking:
        decodes and prepares the images; run it in the CPU pool)."""
        fields = self._base_fields(settings, caller)
        if not self.init_images:
            raise InvalidRequest("Init image not found", param="init_images")
        if self.latent_mask:
            raise InvalidRequest("latent_mask: a separate latent mask is not supported", param="latent_mask")
        resize_mode = 0 if self.resize_mode is None else self.resize_mode
        if resize_mode not in RESIZE_MODES:
            raise InvalidRequest(f"resize_mode {resize_mode} is not supported; use 0 (just resize), "
                                 "1 (crop and resize) or 2 (resize and fill)", param="resize_mode")
        fill = 1 if self.mask is None or self.inpainting_fill is None else self.inpainting_fill
        if fill not in (0, 1):
            raise InvalidRequest(f"inpainting_fill {fill} is not supported; use 0 (fill) or 1 (original): "
                                 "latent noise and latent nothing need A1111's latent masking",
                                 param="inpainting_fill")
        image = _decode(self.init_images[0], "init_images[0]", settings)
        mask = _decode(self.mask, "mask", settings) if self.mask else None
        if (self.width is None) != (self.height is None):
            raise InvalidRequest("give both width and height, or neither", param="width")
        size = (self.width, self.height) if self.width is not None else None
        blur = self.mask_blur
        inputs = img2img_inputs(
            image, mask, size=size, resize_mode=resize_mode, invert=bool(self.inpainting_mask_invert),
            fill=fill,
            only_masked=bool(self.inpaint_full_res), padding=max(0, self.inpaint_full_res_padding or 0),
            blur=settings.default_mask_blur if blur is None else blur,
        )
        fields |= {"init_image": reencode_png(inputs.image), "strength": self.denoising_strength}
        if inputs.mask is None:
            return GenerationRequest(mode=Mode.img2img, **fields), None
        fields |= {"mask_image": reencode_png(inputs.mask), "mask_blur": blur}
        return GenerationRequest(mode=Mode.inpaint, **fields), inputs.crop

    def echo(self) -> dict[str, Any]:
        """A1111 nulls the images in ``parameters`` unless ``include_init_images``."""
        body = super().echo()
        if not self.include_init_images:
            body["init_images"] = body["mask"] = None
        return body


def _decode(value: str, param: str, settings: Settings):
    """A base64 image or ``data:`` URL, with the upload limits (A1111 fetches URLs; pixelmill does not)."""
    if value.startswith(("http://", "https://")):
        raise InvalidRequest(f"{param}: image URLs are not fetched; send the image as base64", param=param)
    return decode_base64_image(value, param=param, settings=settings)
