"""A1111 prompt syntax: ``<lora:name:weight>`` tags, emphasis weights and ``BREAK``.

Pure Python (no torch/diffusers/compel): the API layer calls :func:`extract_lora_tags`,
the engine calls :func:`parse_emphasis` and hands the weighted segments to compel.

Emphasis, as in AUTOMATIC1111's web UI:

- ``(text)`` multiplies the weight of ``text`` by 1.1, ``[text]`` divides it by 1.1,
  ``(text:1.3)`` multiplies it by 1.3; nesting multiplies (``((text))`` = 1.21).
- ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the literal characters.
- ``BREAK`` (upper case, a word of its own) ends the current 77-token chunk: the text
  after it starts a new chunk, even when the current one has room.
- Lenient like A1111: an unclosed ``(`` or ``[`` weights everything up to the end of
  the prompt; a ``)`` or ``]`` with nothing open is kept as a literal character.

Bounds (A1111 has none; issue 19: 2,000 nested ``(`` made 1.1^2000 = inf and a NaN
image). What cannot be honoured is refused as ``InvalidRequest(param="prompt")``, never
clamped, so a caller learns that the image would not be what the prompt says:

- a weight that is not a number (``(a:1.2.3)``);
- more than :data:`MAX_EMPHASIS_DEPTH` brackets open at once (unclosed ones count, as
  they weight the rest of the prompt). This also bounds the parser's work, which grows
  with depth times length;
- a text whose resulting weight (everything that encloses it, multiplied) is outside
  ``±MAX_EMPHASIS_WEIGHT``, or not a number at all (``inf``, ``0 × inf``). Weights beyond
  about 2 already distort an SDXL image; far larger ones overflow half-precision text
  embeddings. Negative weights stay accepted: compel, which applies the weights, treats
  any weight at or below 0 as "without this text".

:func:`check_emphasis` runs the same checks for the request policy, naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pixelmill.core.errors import InvalidRequest

ROUND_FACTOR = 1.1
"""``(text)`` multiplies the weight by this; ``[text]`` divides by it."""
MAX_EMPHASIS_DEPTH = 32
"""Most brackets open at once; real prompts rarely nest more than 8 (1.1^8 = 2.1)."""
MAX_EMPHASIS_WEIGHT = 5.0
"""Largest absolute weight a text may end up with (``(x:5)``, or 17 nested ``(``)."""

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_LORA_TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)
_LORA_OPEN = re.compile(r"<lora:", re.IGNORECASE)
_ESCAPE = re.compile(r"\\[()\[\]\\]")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_TOKEN = re.compile(r"""
      (?P<escape>\\[()\[\]\\])                # \( \) \[ \] \\ : the literal character
    | (?P<weight>:\s*(?P<num>[+-]?[\d.]+)\s*\))  # ":1.3)" closes a weighted ( group
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+|[\\:])
""", re.VERBOSE)


@dataclass(frozen=True)
class Segment:
    """A run of prompt text and the emphasis weight it carries (1.0 = unweighted)."""

    text: str
    weight: float = 1.0


# --- LoRA tags ------------------------------------------------------------------------


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove every ``<lora:name>`` / ``<lora:name:weight>`` tag from ``prompt``.

    Returns the prompt without the tags (runs of spaces left behind collapsed, ends
    stripped) and ``(name, weight)`` for each tag in order; the weight defaults to 1.0.
    Range and count limits are the validator's job, not this parser's. Raises
    ``InvalidRequest(param="prompt")`` for an empty name, a weight that is not a number,
    the three-field form ``<lora:name:te:unet>`` (separate text-encoder/UNet weights are
    not supported) or a ``<lora:`` that is never closed.
    """
    tags = [_parse_lora_tag(match.group(1)) for match in _LORA_TAG.finditer(prompt)]
    rest = _LORA_TAG.sub(" ", prompt)
    if _LORA_OPEN.search(rest):
        raise InvalidRequest("unclosed <lora:...> tag in the prompt", param="prompt")
    if not tags:
        return prompt, []
    # Collapse the holes the tags leave; whitespace runs do not change CLIP's tokens.
    return re.sub(r"[ \t]{2,}", " ", rest).strip(), tags


def _parse_lora_tag(body: str) -> tuple[str, float]:
    fields = [field.strip() for field in body.split(":")]
    name = fields[0]
    if not name:
        raise InvalidRequest(f"<lora:{body}> has no LoRA name", param="prompt")
    if len(fields) == 1:
        return name, 1.0
    if len(fields) > 2:
        raise InvalidRequest(
            f"<lora:{body}>: use <lora:name> or <lora:name:weight>; separate text-encoder "
            "and UNet weights are not supported", param="prompt")
    if not _NUMBER.fullmatch(fields[1]):
        raise InvalidRequest(f"<lora:{body}>: weight {fields[1]!r} is not a number", param="prompt")
    return name, float(fields[1])


# --- emphasis -------------------------------------------------------------------------


def uses_weighting(prompt: str) -> bool:
    """Whether ``prompt`` has A1111 emphasis brackets (unescaped ``(``, ``)``, ``[``, ``]``)."""
    return any(char in "()[]" for char in _ESCAPE.sub("", prompt))


def uses_break(prompt: str) -> bool:
    """Whether ``prompt`` has the A1111 ``BREAK`` keyword (a chunk boundary)."""
    return _BREAK.search(prompt) is not None


def is_plain(prompt: str) -> bool:
    """True when A1111 syntax leaves ``prompt`` as it is: no emphasis, escape or ``BREAK``.

    Such a prompt means the same as text to a pipeline; any other needs :func:`parse_emphasis`.
    """
    return not uses_weighting(prompt) and not uses_break(prompt) and _ESCAPE.search(prompt) is None


def check_emphasis(text: str, *, param: str = "prompt") -> None:
    """Raise ``InvalidRequest`` naming ``param`` when :func:`parse_emphasis` would refuse ``text``.

    For the request policy, before anything is queued: a ``negative_prompt`` is parsed
    by the engine too, and its errors should name it.
    """
    if is_plain(text):
        return
    try:
        parse_emphasis(text)
    except InvalidRequest as exc:
        exc.param = param
        raise


def parse_emphasis(prompt: str) -> list[list[Segment]]:
    """Parse A1111 emphasis into chunks (split at ``BREAK``) of weighted text segments.

    Adjacent segments of equal weight are merged, weights are rounded to 6 decimals (so
    ``([a])`` is exactly 1.0), whitespace-only text has weight 1.0 and empty chunks are
    dropped; an empty prompt gives ``[]``. Raises ``InvalidRequest(param="prompt")`` for
    what the module docstring's bounds refuse.
    """
    items: list[list | None] = []  # [text, weight] or None for BREAK
    opened: list[tuple[str, int]] = []  # (bracket, index into items where it opened)
    for match in _TOKEN.finditer(prompt):
        kind = match.lastgroup
        if kind == "escape":
            items.append([match.group()[1], 1.0])
        elif kind == "open":
            if len(opened) == MAX_EMPHASIS_DEPTH:
                raise InvalidRequest(
                    f"emphasis brackets nest more than {MAX_EMPHASIS_DEPTH} deep in the prompt; "
                    r"write (text:weight) instead, or \( \[ for literal brackets", param="prompt")
            opened.append((match.group(), len(items)))
        elif kind == "weight":
            _close_weighted(match, items, opened)
        elif kind == "close":
            _close(match.group(), items, opened)
        else:
            _add_text(match.group(), items)
    for bracket, start in reversed(opened):  # unclosed: weights the rest, as A1111 does
        _multiply(items, start, ROUND_FACTOR if bracket == "(" else 1 / ROUND_FACTOR)
    return _chunks(items)


def _close_weighted(match: re.Match, items: list, opened: list) -> None:
    number = match.group("num")
    position = _last_open(opened, "(")
    if position is None:
        _add_text(match.group(), items)  # ":1.3)" with no "(" open is just text
        return
    if not _NUMBER.fullmatch(number):
        raise InvalidRequest(f"emphasis weight {number!r} in the prompt is not a number", param="prompt")
    _multiply(items, opened.pop(position)[1], float(number))


def _close(bracket: str, items: list, opened: list) -> None:
    opener = "(" if bracket == ")" else "["
    position = _last_open(opened, opener)
    if position is None:
        items.append([bracket, 1.0])  # nothing to close: a literal character
        return
    _multiply(items, opened.pop(position)[1], ROUND_FACTOR if opener == "(" else 1 / ROUND_FACTOR)


def _last_open(opened: list[tuple[str, int]], bracket: str) -> int | None:
    # Round and square brackets close independently, so "([a)]" still weights "a".
    for position in range(len(opened) - 1, -1, -1):
        if opened[position][0] == bracket:
            return position
    return None


def _add_text(text: str, items: list) -> None:
    parts = _BREAK.split(text)
    for index, part in enumerate(parts):
        if index:
            items.append(None)
        if part:
            items.append([part, 1.0])


def _multiply(items: list, start: int, factor: float) -> None:
    for item in items[start:]:
        if item is not None:
            item[1] *= factor


def _check_weight(text: str, weight: float) -> None:
    # Written so that NaN fails too: every comparison with NaN is False.
    if not -MAX_EMPHASIS_WEIGHT <= weight <= MAX_EMPHASIS_WEIGHT:
        shown = text.strip()[:40]
        raise InvalidRequest(
            f"emphasis gives {shown!r} a weight of {weight:g}; weights must be between "
            f"{-MAX_EMPHASIS_WEIGHT:g} and {MAX_EMPHASIS_WEIGHT:g} (beyond about 2 they already "
            "distort the image)", param="prompt")


def _chunks(items: list) -> list[list[Segment]]:
    chunks: list[list[Segment]] = [[]]
    for item in items:
        if item is None:
            chunks.append([])
            continue
        if item[0].strip():
            _check_weight(item[0], item[1])
        # Whitespace has no tokens to weight (and compel trips over empty weighted fragments).
        text, weight = item[0], round(item[1], 6) if item[0].strip() else 1.0
        chunk = chunks[-1]
        if chunk and chunk[-1].weight == weight:
            chunk[-1] = Segment(chunk[-1].text + text, weight)
        else:
            chunk.append(Segment(text, weight))
    return [chunk for chunk in chunks if any(segment.text.strip() for segment in chunk)]


def segments_text(chunks: list[list[Segment]]) -> str:
    """The prompt text without any syntax: chunk texts joined by a space."""
    return " ".join("".join(segment.text for segment in chunk).strip() for chunk in chunks)
