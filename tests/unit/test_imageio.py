"""Upload decoding, output encoding and A1111 parameters text (pixelmill.images.codecs)."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo

from pixelmill.core.types import OutputFormat
from pixelmill.images.codecs import (
    a1111_parameters,
    decode_upload,
    encode_image,
    open_png,
    reencode_png,
)
from pixelmill.core.errors import InvalidRequest, PayloadTooLarge
from tests.support.infotext import parse_a1111_parameters, read_parameters


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(size=(64, 48), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode=mode)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width``x``height`` followed by a tiny (wrong) IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------ format sniffing


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode(fmt):
    img = decode_upload(_save(_noise(), fmt), param="image")
    assert img.size == (64, 48)
    assert img.mode == "RGB"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_save(_noise(mode="P"), "GIF"), "GIF"),
        (_save(_noise(), "BMP"), "BMP"),
        (np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes(), "not"),
        (b"", "empty"),
    ],
    ids=["gif", "bmp", "random", "empty"],
)
def test_other_formats_refused_with_param(data, needle):
    with pytest.raises(InvalidRequest) as exc_info:
        decode_upload(data, param="mask")
    err = exc_info.value
    assert type(err) is InvalidRequest
    assert err.param == "mask"
    assert needle in err.message
    if data:
        assert "PNG, JPEG or WebP" in err.message


def test_filename_like_content_is_ignored():
    """Format comes from the bytes: a GIF is refused whatever the caller called it."""
    gif = _save(_noise(mode="P"), "GIF")
    with pytest.raises(InvalidRequest):
        decode_upload(gif, param="image.png")


@pytest.mark.parametrize("side", [5000, 20000])
def test_pixel_bomb_refused_before_decoding(side):
    """20000² trips Pillow's own bomb check, 5000² only ours; both are 413 and fast."""
    data = _png_header_only(side, side)
    start = time.perf_counter()
    with pytest.raises(PayloadTooLarge) as exc_info:
        decode_upload(data, param="image")
    assert time.perf_counter() - start < 0.2
    assert exc_info.value.param == "image"


def test_header_only_png_within_limits_is_corrupt_not_500():
    with pytest.raises(InvalidRequest) as exc_info:
        decode_upload(_png_header_only(64, 64), param="image")
    assert type(exc_info.value) is InvalidRequest
    assert "could not be decoded" in exc_info.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_upload_is_invalid_request(fmt):
    data = _save(_noise((256, 256)), fmt)
    with pytest.raises(InvalidRequest) as exc_info:
        decode_upload(data[: len(data) // 2], param="image")
    assert exc_info.value.param == "image"


def test_max_bytes():
    data = _save(_noise(), "PNG")
    with pytest.raises(PayloadTooLarge) as exc_info:
        decode_upload(data, param="image", max_bytes=len(data) - 1)
    assert exc_info.value.param == "image"
    assert decode_upload(data, param="image", max_bytes=len(data)).size == (64, 48)


def test_custom_max_pixels():
    data = _save(_noise((100, 100)), "PNG")
    with pytest.raises(PayloadTooLarge):
        decode_upload(data, param="image", max_pixels=9_999)
    assert decode_upload(data, param="image", max_pixels=10_000).size == (100, 100)


# ------------------------------------------------------------------ modes, EXIF, clean


def test_exif_orientation_applied():
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0)  # left half red
    arr[:, 10:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = _save(Image.fromarray(arr), "PNG", exif=exif.tobytes())
    img = decode_upload(data, param="image")
    assert img.size == (10, 20)
    assert img.getpixel((5, 2)) == (255, 0, 0)  # left side is now on top
    assert img.getpixel((5, 17)) == (0, 0, 255)


@pytest.mark.parametrize(
    ("source_mode", "expected"),
    [("RGBA", "RGBA"), ("LA", "RGBA"), ("L", "L"), ("1", "L"), ("RGB", "RGB"), ("P", "RGB")],
)
def test_mode_rule(source_mode, expected):
    img = _noise(mode="RGB").convert(source_mode)
    assert decode_upload(_save(img, "PNG"), param="image").mode == expected


def test_palette_with_transparency_becomes_rgba():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    out = decode_upload(_save(img, "PNG", transparency=0), param="mask")
    assert out.mode == "RGBA"
    assert out.getpixel((0, 0))[3] == 0
    assert out.getpixel((1, 1)) == (255, 0, 0, 255)


def test_16_bit_grey_is_scaled_not_clipped():
    arr = np.full((4, 4), 32896, dtype="<u2")  # 50 % grey in 16 bits
    data = _save(Image.frombytes("I;16", (4, 4), arr.tobytes()), "PNG")
    img = decode_upload(data, param="image")
    assert img.mode == "L"
    assert img.getpixel((0, 0)) == 128


def test_reencode_strips_metadata():
    info = PngInfo()
    info.add_text("parameters", "secret prompt")
    info.add_text("Comment", "tracking id")
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    original = _noise()
    data = _save(original, "PNG", pnginfo=info, exif=exif.tobytes(), icc_profile=srgb)
    clean = reencode_png(decode_upload(data, param="image"))
    reopened = open_png(clean)
    assert reopened.text == {}
    assert "exif" not in reopened.info and "icc_profile" not in reopened.info
    assert len(reopened.getexif()) == 0
    assert read_parameters(clean) is None
    # sRGB → sRGB conversion leaves pixels (almost) untouched
    diff = np.abs(np.asarray(reopened, int) - np.asarray(original, int))
    assert diff.max() <= 2


def test_reencode_keeps_pixels_and_alpha():
    img = _noise(mode="RGBA")
    back = open_png(reencode_png(img))
    assert back.mode == "RGBA"
    assert np.array_equal(np.asarray(back), np.asarray(img))


# ------------------------------------------------------------------ A1111 parameters

BASE = dict(
    negative_prompt="",
    steps=20,
    sampler="DPM++ 2M",
    schedule="Karras",
    cfg_scale=7.0,
    seed=42,
    width=128,
    height=128,
    model="demo",
)


def test_parameters_exact_format():
    text = a1111_parameters(
        **{**BASE, "negative_prompt": "blurry, low quality"},
        prompt="a cat",
        extra={"Denoising strength": 0.75, "Clip skip": 2, "Version": "pixelmill 0.1.0"},
    )
    assert text == (
        "a cat\n"
        "Negative prompt: blurry, low quality\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 128x128, "
        "Model: demo, Denoising strength: 0.75, Clip skip: 2, Version: pixelmill 0.1.0"
    )


def test_parameters_omit_empty_negative_and_format_floats():
    text = a1111_parameters(**{**BASE, "cfg_scale": 7.5}, prompt="a dog", extra={"Skip": None})
    assert text == (
        "a dog\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, "
        "Size: 128x128, Model: demo"
    )


def test_parameters_without_a_schedule_are_the_pre_1_9_line():
    text = a1111_parameters(**{**BASE, "sampler": "DPM++ 2M Karras", "schedule": None}, prompt="a dog")
    assert text == "a dog\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 128x128, Model: demo"


def test_parameters_quote_values_like_a1111():
    text = a1111_parameters(
        **{**BASE, "model": "my,model"}, prompt="x", extra={"Lora hashes": "a: 1, b: 2"}
    )
    assert 'Model: "my,model"' in text
    assert 'Lora hashes: "a: 1, b: 2"' in text


TRICKY = [
    ("a cat, sitting: on a mat", "ugly, blurry"),
    ("line one,\nline two: with colon\n\nline four", "neg one\nneg two, three"),
    ("写真、猫 — ünïcødé ✓", "低品質"),
    ("", "only negative"),
    ("prompt\n  indented line", "  indented negative"),
    ("", ""),
]


@pytest.mark.parametrize(("prompt", "negative"), TRICKY)
def test_parameters_round_trip_through_parser(prompt, negative):
    extra = {"Denoising strength": 0.5, "Note": 'has "quotes", commas: and\nnewline'}
    text = a1111_parameters(**{**BASE, "negative_prompt": negative}, prompt=prompt, extra=extra)
    parsed = parse_a1111_parameters(text)
    assert parsed["prompt"] == prompt
    assert parsed["negative_prompt"] == negative
    assert parsed["Steps"] == "20"
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert parsed["CFG scale"] == "7"
    assert parsed["Size"] == "128x128"
    assert parsed["Note"] == extra["Note"]


@pytest.mark.parametrize("fmt", list(OutputFormat))
@pytest.mark.parametrize(("prompt", "negative"), TRICKY[:3])
def test_parameters_round_trip_through_encoded_bytes(fmt, prompt, negative):
    text = a1111_parameters(**{**BASE, "negative_prompt": negative}, prompt=prompt)
    data = encode_image(_noise(), fmt, parameters=text)
    assert read_parameters(data) == text
    assert parse_a1111_parameters(read_parameters(data))["prompt"] == prompt


def test_png_uses_itxt_only_for_non_latin1():
    latin = encode_image(_noise(), OutputFormat.png, parameters="café, Steps: 1")
    other = encode_image(_noise(), OutputFormat.png, parameters="猫")
    assert b"tEXtparameters" in latin and b"iTXt" not in latin
    assert b"iTXtparameters" in other
    assert read_parameters(other) == "猫"


def test_jpeg_user_comment_is_a1111_layout():
    data = encode_image(_noise(), OutputFormat.jpeg, parameters="a cat")
    comment = Image.open(io.BytesIO(data)).getexif().get_ifd(0x8769)[0x9286]
    assert comment == b"UNICODE\x00" + "a cat".encode("utf-16-be")


def test_encoded_output_has_no_source_metadata_and_right_format():
    src = _noise()
    src.info["comment"] = b"leak"
    for fmt, pil_name in [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]:
        data = encode_image(src, OutputFormat(fmt))
        out = Image.open(io.BytesIO(data))
        assert out.format == pil_name
        assert "comment" not in out.info
        assert read_parameters(data) is None


@pytest.mark.parametrize("fmt", [OutputFormat.jpeg, OutputFormat.webp])
def test_quality_changes_size(fmt):
    img = _noise((128, 128))
    low = encode_image(img, fmt, quality=10)
    high = encode_image(img, fmt, quality=95)
    default = encode_image(img, fmt)
    assert len(low) < len(default) < len(high)
    # out-of-range values are clamped, not errors (the API layer validates)
    assert encode_image(img, fmt, quality=500) == encode_image(img, fmt, quality=100)


def test_jpeg_flattens_alpha_onto_white():
    img = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    out = Image.open(io.BytesIO(encode_image(img, OutputFormat.jpeg)))
    assert out.mode == "RGB"
    assert min(out.getpixel((8, 8))) > 245


def test_png_keeps_pixels_exactly():
    img = _noise(mode="RGBA")
    out = open_png(encode_image(img, OutputFormat.png, parameters="p"))
    assert np.array_equal(np.asarray(out), np.asarray(img))


def test_read_parameters_refuses_non_images():
    with pytest.raises(InvalidRequest) as exc_info:
        read_parameters(b"GIF89a nonsense", param="file")
    assert exc_info.value.param == "file"


def test_read_parameters_refuses_pixel_bombs_without_decoding():
    with pytest.raises(PayloadTooLarge) as exc_info:
        read_parameters(_png_header_only(20000, 20000), param="file")
    assert exc_info.value.param == "file"
