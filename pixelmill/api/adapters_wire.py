"""Wire fields for LoRAs, ControlNets and the refiner, shared by the native and OpenAI dialects.

Both dialects accept the same JSON shapes (the OpenAI SDK sends them through
``extra_body``; multipart forms may carry them as JSON strings) and translate them here
into the internal :class:`LoraSpec`, :class:`ControlSpec` and :class:`RefinerSpec`.
Limits (how many, which ranges) are checked once, in :mod:`pixelmill.core.policy`.

It also holds the number types of every wire model (:data:`WireInt`, :data:`WireFloat`):
pydantic's lax mode reads JSON ``true`` as 1, so they are strict, and :func:`documented`,
which states the policy's default limits in the OpenAPI schema without enforcing them.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pixelmill.core.types import ControlSpec, LoraSpec, Preprocess, RefinerSpec
from pixelmill.images.codecs import reencode_png
from pixelmill.settings import Settings

_INTEGER_TEXT = re.compile(r"^\s*[+-]?\d{1,40}\s*$")
_NUMBER_TEXT = re.compile(r"^\s*[+-]?(\d{1,40}(\.\d{0,40})?|\.\d{1,40})([eE][+-]?\d{1,3})?\s*$")


def _no_bool(value: Any) -> Any:
    # JSON true/false are not numbers (lax pydantic reads true as 1): say so by name.
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a number, not a boolean")
    return value


def _whole_number(value: Any) -> Any:
    # 2.0 is how some JSON encoders spell 2 (a float typed value in JavaScript or Python):
    # accepted as the integer; 2.5 still fails the strict integer check.
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be an integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WireInt = Annotated[int, BeforeValidator(_whole_number), Strict()]
"""An integer on the wire: a JSON integer (or a float with no fraction), never a boolean
or a string (multipart forms convert their text first: :class:`FormNumbers`)."""
WireFloat = Annotated[float, BeforeValidator(_no_bool), Strict()]
"""A number on the wire: a JSON integer or float, never a boolean or a string."""

_DEFAULTS = Settings.model_fields


def documented(low: str | float | None = None, high: str | float | None = None, *,
               min_length: int | None = None, max_length: str | None = None) -> dict[str, Any]:
    """``json_schema_extra`` stating a limit in the OpenAPI schema, for documentation only.

    The request policy enforces limits (with the server's configured values, so a body
    out of range gets the policy's 400 naming the parameter); the schema shows the
    defaults. A limit given as a string names the :class:`Settings` field it comes from.
    """
    def value(limit: str | float | None) -> float | None:
        return _DEFAULTS[limit].default if isinstance(limit, str) else limit

    extra = {"minimum": value(low), "maximum": value(high), "minLength": min_length,
             "maxLength": value(max_length)}
    return {key: limit for key, limit in extra.items() if limit is not None}


class FormNumbers(BaseModel):
    """Mixin for multipart form models: every form value is text, so a field typed
    :data:`WireInt` or :data:`WireFloat` is converted from its decimal spelling first
    (``"2"``, ``"0.5"``); other text (``"true"``) is left for the strict check to refuse."""

    @model_validator(mode="before")
    @classmethod
    def _numbers_from_text(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        converted = dict(data)
        for name, field in cls.model_fields.items():
            value, kind = data.get(name), _number_kind(field.annotation, field.metadata)
            if not isinstance(value, str) or kind is None:
                continue
            if kind is int and _INTEGER_TEXT.fullmatch(value):
                converted[name] = int(value)  # exact, however long
            elif _NUMBER_TEXT.fullmatch(value):  # "2.0" for an integer: the strict check decides
                converted[name] = float(value)
        return converted


def _number_kind(annotation: Any, metadata: list[Any]) -> type | None:
    """int or float for a field typed WireInt/WireFloat (or Optional of one), else None."""
    if annotation in (int, float) and any(isinstance(item, Strict) for item in metadata):
        return annotation  # pydantic unpacks a top-level Annotated into annotation + metadata
    args = getattr(annotation, "__args__", ())
    return int if WireInt in args else float if WireFloat in args else None


class LoraIn(BaseModel):
    """A LoRA by name (see ``GET /v1/loras``) with its blend weight (-2 to 2)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weight: WireFloat = Field(1.0, json_schema_extra=documented(-2, 2))


class ControlIn(BaseModel):
    """A ControlNet by name (see ``GET /v1/controlnets``) with its control image."""

    model_config = ConfigDict(extra="forbid")

    name: str
    image: str = Field(description="Control image, base64 or a data URL.")
    scale: WireFloat = Field(1.0, description="Conditioning scale, 0-2 (0 = no effect).",
                             json_schema_extra=documented(0, 2))
    start: WireFloat = Field(0.0, description="Fraction of the steps at which the ControlNet starts.",
                             json_schema_extra=documented(0, 1))
    end: WireFloat = Field(1.0, description="Fraction of the steps at which it stops.",
                           json_schema_extra=documented(0, 1))
    preprocess: Preprocess = Field(Preprocess.none, description="none, canny (edge map) or invert.")


class RefinerIn(BaseModel):
    """A refiner checkpoint by name and where the base hands over (fraction of the steps)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    switch_at: WireFloat | None = Field(None, description="Between 0 and 1 (exclusive). "
                                        "Default: the server's refiner_switch_at.")


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
            if not value.strip():
                return None
            try:
                return json.loads(value)
            except RecursionError:  # "[[[[…" thousands deep: a client error, not a crash
                raise ValueError("nested too deeply") from None
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
        if self.refiner is not None:  # an unset switch_at stays None: the policy fills it
            refiner = RefinerSpec(name=self.refiner.name, switch_at=self.refiner.switch_at)
        return {
            "loras": tuple(LoraSpec(name=lora.name, weight=lora.weight) for lora in self.loras),
            "controlnets": tuple(controls),
            "return_control_images": self.return_control_images,
            "refiner": refiner,
        }
