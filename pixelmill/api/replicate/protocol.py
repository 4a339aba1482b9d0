"""Replicate wire models and their translation to :class:`GenerationRequest`.

A prediction body is ``{version | model, input, webhook, webhook_events_filter}``. Its
``input`` takes the fields of the public ``stability-ai/sdxl`` model (cog-sdxl) and of
``black-forest-labs/flux-schnell`` (cog-flux), whichever local model the name maps to:
hosted code written for either runs unchanged. Fields those models take that mean
nothing here (``apply_watermark``, ``disable_safety_checker``, ``go_fast``,
``refine_steps``) are accepted and have no effect; any other field is a 422 naming it.

The models only translate (see :mod:`pixelmill.core.policy`): a field the input leaves
out stays unset and the server's defaults fill it, so omitting ``width`` runs the model's
native size, not cog-sdxl's 1024.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pixelmill.api.adapters_wire import WireFloat, WireInt
from pixelmill.core.errors import InvalidRequest
from pixelmill.core.types import RANDOM_SEED, GenerationRequest, LoraSpec, Mode, OutputFormat, RefinerSpec

PARAM_NAMES = {
    "prompt": "input.prompt",
    "negative_prompt": "input.negative_prompt",
    "width": "input.width",
    "height": "input.height",
    "n": "input.num_outputs",
    "steps": "input.num_inference_steps",
    "guidance": "input.guidance_scale",
    "scheduler": "input.scheduler",
    "seed": "input.seed",
    "strength": "input.prompt_strength",
    "init_image": "input.image",
    "mask_image": "input.mask",
    "output_quality": "input.output_quality",
    "output_format": "input.output_format",
    "refiner": "input.refine",
    "refiner.name": "input.refine",
    "refiner.switch_at": "input.high_noise_frac",
    "loras[0].name": "input.lora",
    "loras[0].weight": "input.lora_scale",
}
"""Internal field → the input field that set it, for error bodies."""

ASPECT_RATIOS = {
    "1:1": (1024, 1024), "16:9": (1344, 768), "21:9": (1536, 640), "3:2": (1216, 832), "2:3": (832, 1216),
    "4:5": (896, 1088), "5:4": (1088, 896), "3:4": (896, 1152), "4:3": (1152, 896), "9:16": (768, 1344),
    "9:21": (640, 1536),
}
"""FLUX's one-megapixel sizes per aspect ratio (cog-flux); ``megapixels: "0.25"`` halves each side."""

EVENT_FILTER = {"start": "started", "output": "completed", "logs": "progress", "completed": "completed"}
"""Replicate webhook event → pixelmill job event. An image model's output appears all at once,
when the job completes, so ``output`` is sent with ``completed``."""
DEFAULT_EVENTS = ("completed",)
"""Replicate's default filter is ``output`` and ``completed``: here both are the completion."""

Refine = Literal["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]


class PredictionInput(BaseModel):
    """The ``input`` of a prediction: the SDXL and FLUX-schnell fields, plus ``lora``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", description="What to draw (required without an image).")
    negative_prompt: str = ""
    image: str | None = Field(None, description="img2img/inpaint input: a /v1/files URL, data: URI or "
                              "http(s) URL.")
    mask: str | None = Field(None, description="Inpaint mask, white = repaint, black = keep (needs image).")
    width: WireInt | None = None
    height: WireInt | None = None
    aspect_ratio: str | None = Field(None, description="FLUX sizes: 1:1, 16:9, 21:9, 3:2, 2:3, 4:5, 5:4, "
                                     "3:4, 4:3, 9:16, 9:21, or custom (width/height).")
    megapixels: Literal["1", "0.25"] | None = None
    num_outputs: WireInt | None = None
    scheduler: str | None = Field(None, description="KarrasDPM, K_EULER, K_EULER_ANCESTRAL, DDIM, "
                                  "DPMSolverMultistep, HeunDiscrete, PNDM, or any pixelmill name.")
    num_inference_steps: WireInt | None = None
    guidance_scale: WireFloat | None = None
    guidance: WireFloat | None = Field(None, description="FLUX-dev's name for guidance_scale.")
    prompt_strength: WireFloat | None = Field(None, description="img2img/inpaint strength (ignored "
                                              "without image).")
    seed: WireInt | None = Field(None, description="Omitted or null: random.")
    refine: Refine | None = None
    high_noise_frac: WireFloat | None = Field(None, description="expert_ensemble_refiner hand-off point.")
    lora: str | None = Field(None, description="pixelmill extension: a LoRA of the models directory.")
    lora_scale: WireFloat | None = Field(None, description="Weight of `lora`; without `lora`, no effect.")
    output_format: Literal["webp", "jpg", "jpeg", "png"] | None = None
    output_quality: WireInt | None = None
    # Accepted so hosted code runs unchanged; nothing here watermarks, filters or compiles.
    refine_steps: WireInt | None = None
    apply_watermark: bool | None = None
    disable_safety_checker: bool | None = None
    go_fast: bool | None = None

    def size(self) -> tuple[int | None, int | None]:
        """``width``/``height``, or the FLUX size of ``aspect_ratio``; None: the server decides."""
        if self.aspect_ratio is None or self.aspect_ratio == "custom":
            return self.width, self.height
        if self.aspect_ratio not in ASPECT_RATIOS:
            raise InvalidRequest(f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)} or custom, "
                                 f"got {self.aspect_ratio!r}", param="input.aspect_ratio")
        if self.width is not None or self.height is not None:
            raise InvalidRequest("give aspect_ratio or width/height (with aspect_ratio 'custom'), not both",
                                 param="input.aspect_ratio")
        width, height = ASPECT_RATIOS[self.aspect_ratio]
        if self.megapixels == "0.25":
            width, height = width // 2 // 16 * 16, height // 2 // 16 * 16
        return width, height

    def refiner_spec(self, server_refiner: str | None) -> RefinerSpec | None:
        """The refiner pass ``refine`` asks for (the server's ``--refiner`` checkpoint)."""
        if self.refine in (None, "no_refiner"):
            return None
        if self.refine == "base_image_refiner":
            raise InvalidRequest("refine 'base_image_refiner' is not supported; use "
                                 "'expert_ensemble_refiner'", param="input.refine")
        if server_refiner is None:
            raise InvalidRequest("this server has no refiner (start it with --refiner NAME)",
                                 param="input.refine")
        return RefinerSpec(name=server_refiner, switch_at=self.high_noise_frac)

    def to_request(self, *, model: str | None, image_png: bytes | None, mask_png: bytes | None,
                   server_refiner: str | None) -> GenerationRequest:
        """The request; ``image_png``/``mask_png`` are the decoded ``image`` and ``mask``
        (the mask already white = repaint). With an image the size comes from it, as on
        the hosted SDXL model, which ignores ``width``/``height`` for img2img and inpaint."""
        if self.mask is not None and self.image is None:
            raise InvalidRequest("mask needs an image to inpaint", param="input.mask")
        mode = Mode.txt2img if image_png is None else Mode.inpaint if mask_png is not None else Mode.img2img
        width, height = self.size() if mode is Mode.txt2img else (None, None)
        guidance = self.guidance_scale if self.guidance_scale is not None else self.guidance
        wire_format = {"jpg": "jpeg"}.get(self.output_format or "", self.output_format)
        output_format = OutputFormat(wire_format) if wire_format else OutputFormat.png
        fields = {
            "mode": mode, "prompt": self.prompt, "negative_prompt": self.negative_prompt, "model": model,
            "width": width, "height": height, "steps": self.num_inference_steps, "guidance": guidance,
            "seed": RANDOM_SEED if self.seed is None else self.seed, "scheduler": self.scheduler,
            "init_image": image_png, "mask_image": mask_png, "output_format": output_format,
            "output_quality": self.output_quality if output_format is not OutputFormat.png else None,
            "loras": (LoraSpec(name=self.lora, weight=1.0 if self.lora_scale is None else self.lora_scale),)
            if self.lora else (),
            "refiner": self.refiner_spec(server_refiner),
        }
        if self.num_outputs is not None:
            fields["n"] = self.num_outputs
        if mode is not Mode.txt2img:
            fields["strength"] = self.prompt_strength  # None: the server's default strength
        return GenerationRequest(**fields)


class PredictionCreate(BaseModel):
    """Body of ``POST /v1/predictions`` (and of the model and deployment routes, without ``version``)."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, description="A version id, or owner/name[:version].")
    model: str | None = Field(None, description="owner/name (the body form of the model route).")
    input: dict = Field(default_factory=dict)
    webhook: str | None = None
    webhook_completed: str | None = Field(None, description="Older form: a webhook for completed only.")
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = None
    stream: bool | None = Field(None, description="Accepted; images are not streamed (no urls.stream).")

    def parsed_input(self) -> PredictionInput:
        """``input`` as :class:`PredictionInput`: 422 naming the first unknown or mistyped field."""
        try:
            return PredictionInput.model_validate(self.input)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "input"
            if first["type"] == "extra_forbidden":
                known = ", ".join(PredictionInput.model_fields)
                message = f"input.{field}: unknown input; this model takes {known}"
            else:
                message = f"input.{field}: {first['msg']}"
            raise InvalidRequest(message, param=f"input.{field}") from None

    def webhook_target(self) -> tuple[str, tuple[str, ...]] | None:
        """(url, pixelmill events) of the webhook this body asks for, if any."""
        if self.webhook:
            names = self.webhook_events_filter
            events = DEFAULT_EVENTS
            if names is not None:
                events = tuple(dict.fromkeys(EVENT_FILTER[name] for name in names))
            return self.webhook, events
        if self.webhook_completed:
            return self.webhook_completed, ("completed",)
        return None
