"""Reading back the A1111 ``parameters`` text pixelmill writes into images.

The server only writes infotext (:func:`pixelmill.images.codecs.generation_infotext`, in
A1111 >= 1.9's format: ``Sampler: DPM++ 2M, Schedule type: Karras``); the tests read it back
the way A1111's "PNG Info" does, to check that what an image carries describes how it was made.
"""

from __future__ import annotations

import json
import re


from pixelmill.images.codecs import _ASCII_PREFIX, _EXIF_IFD, _NEGATIVE, _UNICODE_PREFIX, _USER_COMMENT, \
    PARAMETERS_KEY, _open_checked

# One "Key: value" item of the settings line; quoted values are JSON strings.
_PAIR_RE = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_a1111_parameters(text: str) -> dict[str, str]:
    """Parse A1111 infotext back into a dict.

    Keys ``prompt`` and ``negative_prompt`` (always present, possibly empty) plus every
    ``Key: value`` pair of the settings line, values as (unquoted) strings. The last line
    is the settings line only if it holds at least three pairs, as in A1111; otherwise it
    belongs to the prompt. A prompt line starting with ``Negative prompt:`` is ambiguous
    in this format and is read as the start of the negative prompt.
    """
    lines = text.strip().split("\n")
    settings: dict[str, str] = {}
    if len(_PAIR_RE.findall(lines[-1])) >= 3:
        settings = _parse_settings(lines.pop())
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if not negative and line.startswith(_NEGATIVE):
            rest = line[len(_NEGATIVE) :]
            negative.append(rest[1:] if rest.startswith(" ") else rest)  # the one we wrote
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    return {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative), **settings}


def _parse_settings(line: str) -> dict[str, str]:
    """Split the settings line into pairs, unquoting JSON-quoted values."""
    out: dict[str, str] = {}
    for key, value in _PAIR_RE.findall(line):
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # keep the raw text rather than lose the pair
        out[key] = value
    return out


def read_parameters(data: bytes, *, param: str = "image") -> str | None:
    """Return the A1111 ``parameters`` text of a PNG, JPEG or WebP, or None if absent.

    Reads the PNG text chunk, or the EXIF UserComment of JPEG/WebP; pixels are not
    decoded. Refuses other data like :func:`decode_upload` does (errors carry ``param``).
    """
    img = _open_checked(data, param=param, max_pixels=None)
    try:
        if img.format == "PNG":
            text = img.text.get(PARAMETERS_KEY)  # type: ignore[attr-defined]
            return str(text) if text is not None else None
        exif = img.getexif()
        comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
        return _decode_user_comment(comment, big_endian=exif.endian != "<")
    except (OSError, ValueError, SyntaxError, EOFError):
        return None  # unreadable metadata means "no parameters", not a broken request


def _decode_user_comment(comment: object, *, big_endian: bool) -> str | None:
    """Decode an EXIF UserComment by its 8-byte character-code prefix."""
    if isinstance(comment, str):
        return comment
    if not isinstance(comment, bytes) or len(comment) < 8:
        return None
    prefix, body = comment[:8], comment[8:]
    if prefix == _UNICODE_PREFIX:
        return body.decode("utf-16-be" if big_endian else "utf-16-le", errors="replace")
    if prefix == _ASCII_PREFIX:
        return body.decode("ascii", errors="replace")
    return body.decode("utf-8", errors="replace").rstrip("\x00")
