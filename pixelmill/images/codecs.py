"""Image codecs: decode untrusted uploads safely, encode outputs with A1111 metadata.

Uploads are sniffed from their bytes (never a filename or content type), size-checked
from the header before any pixel is decoded, then normalised to one of three modes
(see :func:`decode_upload`). Outputs carry the generation parameters in the text
format AUTOMATIC1111's web UI writes, so existing "PNG info" tools can read them.
"""

from __future__ import annotations

import io
import json
import re
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps
from PIL.PngImagePlugin import PngInfo

from pixelmill.core.types import GenerationRequest, Mode, OutputFormat
from pixelmill.core.errors import InvalidRequest, PayloadTooLarge
from pixelmill.images.budget import charge_pixels
from pixelmill.images.schedules import split_sampler_label

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
"""Pillow format names accepted for uploads."""

DEFAULT_QUALITY = 90
"""JPEG/WebP quality used when the caller does not choose one."""

PARAMETERS_KEY = "parameters"
"""PNG text chunk name A1111 uses for the generation parameters."""

_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
# A JPEG APP1 segment holds at most 65533 bytes; Pillow refuses longer EXIF blocks.
_MAX_JPEG_EXIF = 65_000

# Only used to name a refused format in the error message; Pillow is never asked to
# parse these (opening runs only the three allowed plugins).
_KNOWN_MAGIC = {b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}

_GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N"}


# --------------------------------------------------------------------------- decoding


def decode_upload(
    data: bytes, *, param: str, max_pixels: int = 16_000_000, max_bytes: int | None = None
) -> Image.Image:
    """Decode an uploaded PNG, JPEG or WebP image, refusing anything unsafe.

    Checks, in order: byte size (``PayloadTooLarge``), real format sniffed from the
    bytes (``InvalidRequest``), pixel count from the header *before* decoding
    (``PayloadTooLarge``), then decodes (corrupt/truncated → ``InvalidRequest``). All
    errors carry ``param``. EXIF orientation is applied, ICC-tagged images are
    converted to sRGB, and only the first frame of an animation is used. Pillow's own
    bomb limit (``Image.MAX_IMAGE_PIXELS``) also applies, so the effective pixel limit
    is the smaller of the two.

    Mode rule of the result: images with any transparency (alpha channel, palette or
    ``tRNS`` transparency) → ``RGBA``; greyscale without transparency (1, L, 16-bit,
    float) → ``L``; everything else (RGB, palette, CMYK, YCbCr) → ``RGB``.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(
            f"{param} is {len(data)} bytes; the limit is {max_bytes} bytes.", param=param
        )
    img = _open_checked(data, param=param, max_pixels=max_pixels)
    charge_pixels(img.width * img.height, param=param)  # the request's budget, before decoding
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as exc:
        raise InvalidRequest(
            f"{param} could not be decoded (corrupt or truncated {img.format} data: {exc}).",
            param=param,
        ) from exc
    return _normalise_mode(_to_srgb(img))


def _open_checked(data: bytes, *, param: str, max_pixels: int | None) -> Image.Image:
    """Open (header only) with the allowed plugins and check the pixel count."""
    allowed = ", ".join(ALLOWED_FORMATS[:-1]) + " or WebP"
    if not data:
        raise InvalidRequest(f"{param} is empty; send a {allowed} image.", param=param)
    try:
        # Turn Pillow's bomb warning into an error so a too-large header never decodes.
        # (catch_warnings is process-global; a racing thread can at worst leave this
        # same "error" filter installed, which is what we want anyway.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        limit = min(max_pixels or Image.MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS or 0)
        raise PayloadTooLarge(
            f"{param} has too many pixels; the limit is {limit} pixels.", param=param
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise InvalidRequest(
            f"{param} is {_describe(data)}; only {allowed} images are accepted.", param=param
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidRequest(f"{param} could not be read ({exc}).", param=param) from exc
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise PayloadTooLarge(
            f"{param} is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} pixels.",
            param=param,
        )
    return img


def _describe(data: bytes) -> str:
    """Name a refused upload's format for the error message, e.g. 'a GIF image'."""
    for magic, name in _KNOWN_MAGIC.items():
        if data.startswith(magic):
            return f"a {name} image"
    return "not a recognised image"


def _to_srgb(img: Image.Image) -> Image.Image:
    """Convert an ICC-tagged RGB(A) image to sRGB; the profile is dropped later anyway."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA"):
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        rgb = ImageCms.profileToProfile(
            img.convert("RGB"), src, ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    except (ImageCms.PyCMSError, OSError, ValueError):
        # A broken profile is not worth refusing an upload for: use the pixels as they are.
        return img
    if img.mode == "RGBA":
        rgb.putalpha(img.getchannel("A"))
    return rgb


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Apply the RGBA / L / RGB rule documented in :func:`decode_upload`."""
    has_alpha = "A" in img.getbands() or "transparency" in img.info
    if has_alpha:
        out = img if img.mode == "RGBA" else img.convert("RGBA")
    elif img.mode in _GREY_MODES:
        out = _grey_to_l(img)
    else:
        out = img if img.mode == "RGB" else img.convert("RGB")
    return out


def _grey_to_l(img: Image.Image) -> Image.Image:
    """Greyscale of any depth → 8-bit L (Pillow's own convert clips 16-bit to 255)."""
    if img.mode in ("1", "L"):
        return img.convert("L")
    # PNG is the only allowed format with deeper greys, and it tops out at 16 bits.
    scaled = np.asarray(img, dtype=np.float64) / 257.0  # 0..65535 → 0..255
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def reencode_png(img: Image.Image) -> bytes:
    """Encode a decoded image as a clean PNG: pixels only, no text, EXIF or ICC chunks."""
    buf = io.BytesIO()
    _bare(img).save(buf, format="PNG")
    return buf.getvalue()


def _bare(img: Image.Image) -> Image.Image:
    """A copy without metadata; savers read ICC, comments etc. from ``info``.

    Palette transparency is pixel data, not metadata, so it is kept.
    """
    out = img.copy()
    out.info = {k: v for k, v in img.info.items() if k == "transparency"}
    return out


def open_png(data: bytes) -> Image.Image:
    """Open trusted PNG bytes the server re-encoded itself; pixels are loaded eagerly."""
    img = Image.open(io.BytesIO(data), formats=("PNG",))
    img.load()
    return img


# -------------------------------------------------------------- A1111 parameters text

_KEY_RE = re.compile(r"\w[\w \-/]*")
_NEGATIVE = "Negative prompt:"


def a1111_parameters(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    schedule: str | None,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str,
    extra: dict[str, object] | None = None,
) -> str:
    """Render generation settings in A1111's infotext format.

    Line 1.. the prompt, then ``Negative prompt: …`` (omitted when empty), then one
    settings line ``Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42,
    Size: WxH, Model: …`` followed by ``extra`` pairs in their order (``None`` values skipped;
    ``schedule=None`` writes the pre-1.9 line without ``Schedule type``). Values with
    ``,``, ``:``, a newline or a leading quote are JSON-quoted; floats with no fraction
    print as integers. Surrounding whitespace of the whole text is stripped, as A1111 does.
    """
    pairs: dict[str, object] = {
        "Steps": steps,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": cfg_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model": model,
        **(extra or {}),
    }
    settings = ", ".join(
        f"{_check_key(k)}: {_quote(_format_value(v))}" for k, v in pairs.items() if v is not None
    )
    negative = f"\n{_NEGATIVE} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{settings}".strip()


def generation_infotext(
    request: GenerationRequest, *, model: str, sampler: str, seed: int, width: int, height: int,
    version: str,
) -> str:
    """The infotext of one image of a resolved ``request``, in A1111's own conventions.

    What A1111 1.x writes (``processing.create_infotext``) and its ControlNet extension
    (sd-webui-controlnet) adds, so its "PNG Info" sends everything that made the image:

    * LoRAs: pixelmill moves ``<lora:…>`` tags out of the prompt; A1111 keeps them in the
      prompt text, so each resolved LoRA goes back as ``<lora:name:weight>`` at its end.
    * ``Clip skip``: A1111 counts the last CLIP layer as 1 (``hidden_states[-N]``) and
      omits the pair at 1; ``request.clip_skip`` is diffusers' count of layers skipped
      (``hidden_states[-(k + 1)]``), so A1111's value is ``clip_skip + 1``.
    * ``ControlNet i``: one quoted value of ``Module, Model, Weight, Guidance Start,
      Guidance End`` pairs per unit (Module is the preprocessor: none, canny, invert).
    * ``Refiner`` and ``Refiner switch at``, as A1111 writes them.
    * ``Sampler`` and ``Schedule type`` apart, as A1111 >= 1.9 writes them: ``sampler`` is
      pixelmill's one-name label (``DPM++ 2M Karras``), split by
      :func:`pixelmill.images.schedules.split_sampler_label`.
    """
    extra: dict[str, object] = {}
    if request.mode is not Mode.txt2img:
        extra["Denoising strength"] = request.strength
    if request.clip_skip:
        extra["Clip skip"] = request.clip_skip + 1
    if request.mode is Mode.inpaint:
        extra["Mask blur"] = request.mask_blur
    for index, control in enumerate(request.controlnets):
        unit = {"Module": control.preprocess.value, "Model": control.name, "Weight": control.scale,
                "Guidance Start": control.start, "Guidance End": control.end}
        # Names are plain identifiers (the policy checks), so the inner pairs stay parseable.
        extra[f"ControlNet {index}"] = ", ".join(f"{k}: {_format_value(v)}" for k, v in unit.items())
    if request.refiner is not None:
        extra["Refiner"] = request.refiner.name
        extra["Refiner switch at"] = request.refiner.switch_at
    extra["Version"] = version
    tags = [f"<lora:{lora.name}:{_format_value(lora.weight)}>" for lora in request.loras]
    sampler_name, schedule = split_sampler_label(sampler)
    return a1111_parameters(
        # A space, not a comma: A1111 removes the tags before encoding, and a comma would
        # be a token the image was not made with.
        prompt=" ".join(part for part in (request.prompt, *tags) if part),
        negative_prompt=request.negative_prompt, steps=request.steps, sampler=sampler_name,
        schedule=schedule, cfg_scale=request.guidance, seed=seed, width=width, height=height, model=model,
        extra=extra,
    )


def _check_key(key: str) -> str:
    """Keys are ours, not users'; one that the parser cannot read back is a bug."""
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid A1111 parameter key: {key!r}")
    return key


def _format_value(value: object) -> str:
    """Format like A1111 prints its values: 7.0 → '7', 7.5 → '7.5'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _quote(text: str) -> str:
    """JSON-quote a value the settings line could not otherwise hold (A1111's rule)."""
    if any(c in text for c in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


# --------------------------------------------------------------------------- encoding


def encode_image(
    img: Image.Image,
    fmt: OutputFormat,
    *,
    quality: int | None = None,
    parameters: str | None = None,
    png_level: int | None = None,
) -> bytes:
    """Encode an output image, embedding ``parameters`` the way A1111 does.

    PNG: a ``parameters`` text chunk (tEXt, or iTXt when the text is not latin-1).
    JPEG/WebP: EXIF UserComment with the ``UNICODE\\0`` prefix and UTF-16 text in the
    EXIF block's (big-endian) byte order. JPEG is RGB (alpha flattened onto white);
    a JPEG whose EXIF would exceed the 64 KB APP1 limit is written without parameters
    rather than failing. ``quality`` (default 90) is clamped to 1..100; the API layer
    is responsible for refusing out-of-range values. ``png_level`` is the zlib level of a
    PNG (0..9; None: Pillow's 6). Level 1 is several times faster for a few percent more
    bytes (the server's ``--png-compress-level``; numbers in bench/RESULTS.md).
    """
    fmt = OutputFormat(fmt)
    # A fresh image so no info (EXIF, ICC, text) of the source leaks into the output.
    clean = _bare(img)
    q = DEFAULT_QUALITY if quality is None else max(1, min(100, int(quality)))
    buf = io.BytesIO()
    if fmt is OutputFormat.png:
        _save_png(clean, buf, parameters, png_level)
    elif fmt is OutputFormat.jpeg:
        _save_with_exif(_flatten_white(clean), buf, "JPEG", q, parameters)
    else:
        if clean.mode not in ("RGB", "RGBA"):
            clean = clean.convert("RGBA" if "A" in clean.getbands() else "RGB")
        _save_with_exif(clean, buf, "WEBP", q, parameters)
    return buf.getvalue()


def _save_png(img: Image.Image, buf: io.BytesIO, parameters: str | None, level: int | None = None) -> None:
    info = PngInfo()
    if parameters is not None:
        try:
            parameters.encode("latin-1")
            info.add_text(PARAMETERS_KEY, parameters)
        except UnicodeEncodeError:
            info.add_itxt(PARAMETERS_KEY, parameters)
    options = {} if level is None else {"compress_level": max(0, min(9, int(level)))}
    img.save(buf, format="PNG", pnginfo=info, **options)


def _save_with_exif(
    img: Image.Image, buf: io.BytesIO, fmt: str, quality: int, parameters: str | None
) -> None:
    """JPEG or WebP with ``parameters`` in EXIF; JPEG's APP1 size limit drops it."""
    exif = _exif_bytes(parameters)
    if fmt == "JPEG" and exif is not None and len(exif) > _MAX_JPEG_EXIF:
        exif = None
    img.save(buf, format=fmt, quality=quality, **({"exif": exif} if exif else {}))


def _flatten_white(img: Image.Image) -> Image.Image:
    """JPEG has no alpha: composite onto white so transparent areas do not turn black."""
    if "A" not in img.getbands():
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _exif_bytes(parameters: str | None) -> bytes | None:
    """An EXIF block holding ``parameters`` as UserComment (A1111/piexif layout)."""
    if parameters is None:
        return None
    exif = Image.Exif()
    exif.endian = ">"  # big-endian, matching the UTF-16-BE text A1111 writes
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = _UNICODE_PREFIX + parameters.encode("utf-16-be")
    return exif.tobytes()
