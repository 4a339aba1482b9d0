"""ControlNet units as the sd-webui-controlnet extension takes them (``alwayson_scripts``).

A unit is a dict (``image``, ``module``, ``model``, ``weight``, ``guidance_start``,
``guidance_end``, ``enabled``, …; the legacy ``input_image`` and ``guidance`` too). Each
enabled unit becomes a :class:`ControlSpec`; the request policy checks the counts and
ranges and the catalog the model name. Settings that tune the extension's own
preprocessing (``processor_res``, ``threshold_a/b``, ``pixel_perfect``, ``resize_mode``,
``control_mode``, ``low_vram``, ``hr_option``) are accepted without effect.
"""

from __future__ import annotations

import re
from typing import Any

from pixelmill.core.errors import InvalidRequest
from pixelmill.core.types import ControlSpec, Preprocess
from pixelmill.images.codecs import reencode_png
from pixelmill.settings import Settings

MODULES = {"none": Preprocess.none, "canny": Preprocess.canny, "invert": Preprocess.invert,
           "invert (from white bg & black line)": Preprocess.invert}
"""Extension module (preprocessor) names pixelmill runs, lower case."""
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,}\]\s*$")


def model_name(title: str) -> str:
    """``"control_v11p_sd15_canny [d14c016b]"`` → ``"control_v11p_sd15_canny"`` (the extension's titles)."""
    return _HASH_SUFFIX.sub("", title).strip()


def _number(unit: dict, key: str, default: float, param: str) -> float:
    value = unit.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{param}.{key} must be a number, got {value!r}", param=f"{param}.{key}")
    return float(value)


def control_spec(unit: Any, index: int, settings: Settings) -> ControlSpec | None:
    """One unit as a ControlSpec; None for a disabled unit (``enabled: false``)."""
    from pixelmill.api.native.protocol import decode_base64_image  # one decoder for every dialect

    param = f"alwayson_scripts.ControlNet.args[{index}]"
    if not isinstance(unit, dict):
        raise InvalidRequest(f"{param} must be a ControlNet unit (an object)", param=param)
    if unit.get("enabled") is False:
        return None
    module = str(unit.get("module") or "none").strip().lower()
    if module not in MODULES:
        known = ", ".join(sorted(MODULES))
        raise InvalidRequest(f"{param}.module {unit.get('module')!r} is not available here; "
                             f"available: {known}", param=f"{param}.module")
    model = model_name(str(unit.get("model") or ""))
    if not model or model.lower() == "none":
        raise InvalidRequest(f"{param}.model is required for an enabled unit", param=f"{param}.model")
    image = unit.get("image") or unit.get("input_image")
    if isinstance(image, dict):  # the extension also takes {"image": b64, "mask": b64}
        image = image.get("image")
    if not isinstance(image, str) or not image:
        raise InvalidRequest(f"{param}.image is required (a base64 control image)", param=f"{param}.image")
    if image.startswith(("http://", "https://")):
        raise InvalidRequest(f"{param}.image: image URLs are not fetched; send base64",
                             param=f"{param}.image")
    decoded = decode_base64_image(image, param=f"{param}.image", settings=settings)
    return ControlSpec(
        name=model, image=reencode_png(decoded.convert("RGB")),
        scale=_number(unit, "weight", 1.0, param),
        start=_number(unit, "guidance_start", 0.0, param),
        end=_number(unit, "guidance_end", _number(unit, "guidance", 1.0, param), param),
        preprocess=MODULES[module],
    )


def control_specs(args: list[Any], settings: Settings) -> tuple[ControlSpec, ...]:
    """Every enabled unit of ``alwayson_scripts.ControlNet.args``, in order."""
    specs = (control_spec(unit, index, settings) for index, unit in enumerate(args))
    return tuple(spec for spec in specs if spec is not None)
