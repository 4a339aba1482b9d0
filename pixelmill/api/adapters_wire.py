"""Wire fields for LoRAs, ControlNets and the refiner, shared by the native and OpenAI dialects.

Both dialects accept the same JSON shapes (the OpenAI SDK sends them through
``extra_body``; multipart forms may carry them as JSON strings) and translate them here
into the internal :class:`LoraSpec`, :class:`ControlSpec` and :class:`RefinerSpec`.
Limits (how many, which ranges) are checked once, in :mod:`pixelmill.core.policy`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pixelmill.core.types import ControlSpec, LoraSpec, Preprocess, RefinerSpec
from pixelmill.images.codecs import reencode_png
from pixelmill.settings import Settings


class LoraIn(BaseModel):
    """A LoRA by name (see ``GET /v1/loras``) with its blend weight (-2 to 2)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float = 1.0


class ControlIn(BaseModel):
    """A ControlNet by name (see ``GET /v1/controlnets``) with its control image."""

    model_config = ConfigDict(extra="forbid")

    name: str
    image: str = Field(description="Control image, base64 or a data URL.")
    scale: float = Field(1.0, description="Conditioning scale, 0-2 (0 = no effect).")
    start: float = Field(0.0, description="Fraction of the steps at which the ControlNet starts.")
    end: float = Field(1.0, description="Fraction of the steps at which it stops.")
    preprocess: Preprocess = Field(Preprocess.none, description="none, canny (edge map) or invert.")


class RefinerIn(BaseModel):
    """A refiner checkpoint by name and where the base hands over (fraction of the steps)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    switch_at: float | None = Field(None, description="Default: the server's refiner_switch_at.")


class AdapterFields(BaseModel):
    """Mixin: the adapter fields of a generation body, and their translation."""

    loras: list[LoraIn] = Field([], description="LoRAs to blend (at most 5); `<lora:name:w>` in the prompt also works.")
    controlnets: list[ControlIn] = Field([], description="ControlNets (at most 3).")
    return_control_images: bool = Field(False, description="Also return the preprocessed control images.")
    refiner: RefinerIn | None = Field(None, description="Refiner pass (txt2img, img2img).")

    @field_validator("loras", "controlnets", "refiner", mode="before")
    @classmethod
    def _json_in_form(cls, value: Any) -> Any:
        # Multipart forms (OpenAI edits/variations) carry structured fields as JSON text.
        if isinstance(value, str):
            return json.loads(value) if value.strip() else None
        return value

    def adapter_fields(self, settings: Settings) -> dict[str, Any]:
        """The ``GenerationRequest`` fields for this body's adapters (control images decoded)."""
        from pixelmill.api.native.protocol import decode_base64_image  # one decoder for both dialects

        controls = []
        for index, control in enumerate(self.controlnets):
            param = f"controlnets[{index}].image"
            image = decode_base64_image(control.image, param=param, settings=settings)
            controls.append(ControlSpec(
                name=control.name, image=reencode_png(image.convert("RGB")), scale=control.scale,
                start=control.start, end=control.end, preprocess=control.preprocess,
            ))
        refiner = None
        if self.refiner is not None:
            switch_at = settings.refiner_switch_at if self.refiner.switch_at is None else self.refiner.switch_at
            refiner = RefinerSpec(name=self.refiner.name, switch_at=switch_at)
        return {
            "loras": tuple(LoraSpec(name=lora.name, weight=lora.weight) for lora in self.loras),
            "controlnets": tuple(controls),
            "return_control_images": self.return_control_images,
            "refiner": refiner,
        }
