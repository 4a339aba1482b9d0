"""Read a safetensors file's tensor names and shapes from its header alone.

Only the 8-byte length and the JSON header are read, never the tensor data nor torch;
pickle formats are refused by name before a file is opened. ``lora_check`` (LoRAs and
base checkpoints), ``models_dir`` and ``families`` use it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from pixelmill.registry.models_dir import PICKLE_SUFFIXES

MAX_HEADER_BYTES = 100 << 20
"""A safetensors header larger than this is refused (real SDXL checkpoints: < 1 MB)."""


class HeaderError(ValueError):
    """A file is not a well-formed safetensors file."""


def read_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a safetensors file; :class:`HeaderError` if malformed.

    Pickle formats are refused by name before the file is opened.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise HeaderError(f"{path.name}: pickle files ({path.suffix}) are never opened")
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        file.seek(0)
        prefix = file.read(8)
        if len(prefix) < 8:
            raise HeaderError("not a safetensors file: shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", prefix)
        if length < 2 or length > min(MAX_HEADER_BYTES, size - 8):
            raise HeaderError("not a safetensors file: header length out of range")
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise HeaderError("not a safetensors file: header is not JSON") from None
    except RecursionError:  # hostile "[[[[…": a real header nests 3 deep
        raise HeaderError("not a safetensors file: header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise HeaderError("not a safetensors file: header is not a JSON object")
    return _shapes(header, size - 8 - length)


def _shapes(header: dict, data_bytes: int) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        ok = isinstance(meta, dict) and isinstance(meta.get("dtype"), str)
        shape, offsets = (meta.get("shape"), meta.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2
        ok = ok and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1] <= data_bytes
        if not ok:
            raise HeaderError(f"bad safetensors header entry for tensor {key!r}")
        shapes[key] = tuple(shape)
    return shapes
