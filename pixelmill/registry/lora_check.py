"""Check a LoRA file against a base checkpoint from safetensors headers alone.

Only the 8-byte length and the JSON header of each file are read (never the tensor
data, never torch): a LoRA's tensor names and shapes are parsed, paired into
down/up halves, and each target is matched with the base model's weight of the same
module. Recognised formats:

* ``peft``: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (diffusers today);
* ``diffusers``: ``<component>.<module>.lora.down.weight`` / ``lora.up.weight``, also
  ``lora_linear_layer.down/up`` and the old ``processor.to_q_lora.down`` names;
* ``kohya``: ``lora_unet_…`` / ``lora_te1_…`` / ``lora_te2_…`` with ``.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha``; UNet names may be diffusers' or SGM's (flattened).

Base shapes come from a diffusers folder (``unet/``, ``text_encoder/``,
``text_encoder_2/``, sharded or not) or a single-file SGM checkpoint, converted to
diffusers module names. Kohya files often name UNet modules the SGM way
(``input_blocks.4.1…``): :func:`block_pairs` maps diffusers blocks to SGM blocks.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from pixelmill.core.errors import InvalidRequest, ModelUnavailable
from pixelmill.registry.models_dir import PICKLE_SUFFIXES, ModelEntry, ModelKind
from pixelmill.registry.sgm_names import UnetLayout, block_pairs, to_sgm, from_sgm, open_clip_to_hf

COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "transformer")  # transformer: FLUX.1 / SD3.5
MAX_HEADER_BYTES = 100 << 20
"""A safetensors header larger than this is refused (real SDXL checkpoints: < 1 MB)."""

_KOHYA_COMPONENTS = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}
_PART = r"^(unet|text_encoder|text_encoder_2|transformer)\.(.+)"
_KEY_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("peft", re.compile(_PART + r"\.lora_(A|B)\.weight$")),
    ("diffusers", re.compile(_PART + r"\.(?:lora|lora_linear_layer)\.(down|up)\.weight$")),
    ("diffusers", re.compile(r"^(unet)\.(.+\.processor\.to_(?:q|k|v|out))_lora\.(down|up)\.weight$")),
    ("kohya", re.compile(r"^lora_(unet|te1|te2)_(.+)\.lora_(down|up)\.weight$")),
    ("alpha", re.compile(r"^lora_(unet|te1|te2)_(.+)\.(alpha)$")),
    ("alpha", re.compile(_PART + r"\.(alpha)$")),
]
_HALF = {"A": "down", "B": "up", "down": "down", "up": "up", "alpha": "alpha"}


class HeaderError(ValueError):
    """A file is not a well-formed safetensors file."""


@dataclass(frozen=True)
class LoraTarget:
    """One adapted module: its component, module name as written, and half shapes."""

    component: str
    module: str
    down: tuple[int, ...]
    up: tuple[int, ...]
    key: str
    up_key: str

    @property
    def rank(self) -> int:
        return self.down[0]


@dataclass(frozen=True)
class LoraInfo:
    """What a LoRA file holds, from its header: format, ranks, targets, components."""

    path: Path
    format: str
    targets: tuple[LoraTarget, ...]
    size_bytes: int

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(sorted({t.rank for t in self.targets}))

    @property
    def rank(self) -> int:
        """The largest rank (most LoRAs have one rank everywhere)."""
        return max(self.ranks)

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(c for c in COMPONENTS if any(t.component == c for t in self.targets))


@dataclass(frozen=True)
class BaseShapes:
    """Weight shapes of a base checkpoint: component → diffusers module name → shape."""

    name: str
    modules: dict[str, dict[str, tuple[int, ...]]]
    layout: UnetLayout | None


# --- headers --------------------------------------------------------------------------


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


# --- LoRA files -----------------------------------------------------------------------


def _parse_key(key: str) -> tuple[str, str, str, str]:
    """(format, component, module, half) of one LoRA tensor name."""
    for fmt, pattern in _KEY_PATTERNS:
        match = pattern.match(key)
        if match:
            component, module, half = match.groups()
            component = _KOHYA_COMPONENTS.get(component, component)
            if ".processor.to_" in module:  # old attention-processor names
                stem, proj = module.split(".processor.to_")
                module = f"{stem}.to_{'out.0' if proj == 'out' else proj}"
            return fmt, component, _strip_text_model(component, module), _HALF[half]
    raise InvalidRequest(
        f"tensor {key!r} is not a LoRA tensor of a supported format (diffusers/peft "
        "'unet.…lora_A.weight', 'lora.down.weight' or kohya 'lora_unet_…/lora_te1_…/lora_te2_…')",
        param="file",
    )


def _strip_text_model(component: str, module: str) -> str:
    # CLIP weights are saved with or without the "text_model." wrapper; compare without.
    if component not in ("unet", "transformer"):
        module = module.removeprefix("text_model.").removeprefix("text_model_")
    return module


def lora_from_shapes(path: Path, shapes: dict[str, tuple[int, ...]], size: int) -> LoraInfo:
    """Pair a LoRA's tensors into targets; :class:`InvalidRequest` (param ``file``) if unusable."""
    halves: dict[tuple[str, str], dict[str, tuple[tuple[int, ...], str]]] = {}
    formats = set()
    for key, shape in shapes.items():
        fmt, component, module, half = _parse_key(key)
        formats.add("kohya" if fmt == "alpha" and key.startswith("lora_") else fmt)
        halves.setdefault((component, module), {})[half] = (shape, key)
    formats.discard("alpha")
    if not formats:
        raise InvalidRequest("the file holds no LoRA tensors", param="file")
    if len(formats) > 1:
        raise InvalidRequest(f"the file mixes LoRA formats ({', '.join(sorted(formats))})", param="file")
    targets = tuple(_target(component, module, parts) for (component, module), parts
                    in sorted(halves.items()))
    return LoraInfo(Path(path), formats.pop(), targets, size)


def _target(component: str, module: str, parts: dict) -> LoraTarget:
    any_key = next(iter(parts.values()))[1]
    for half in ("down", "up"):
        if half not in parts:
            raise InvalidRequest(f"LoRA tensor {any_key!r} has no {half} half (incomplete pair)",
                                 param="file")
    (down, key), (up, up_key) = parts["down"], parts["up"]
    if "alpha" in parts and parts["alpha"][0] not in ((), (1,)):
        raise InvalidRequest(f"LoRA tensor {parts['alpha'][1]!r} must be a scalar", param="file")
    if len(down) not in (2, 4) or len(up) != len(down) or down[0] == 0:
        raise InvalidRequest(f"LoRA tensors {key!r}/{up_key!r} have shapes {list(down)}/{list(up)}: "
                             "expected [rank, in]/[out, rank] or conv [rank, in, k, k]/[out, rank, 1, 1]",
                             param="file")
    if up[1] != down[0] or (len(up) == 4 and up[2:] != (1, 1)):
        raise InvalidRequest(f"LoRA tensor {up_key!r} has shape {list(up)}, inconsistent with rank "
                             f"{down[0]} of {key!r}", param="file")
    return LoraTarget(component, module, down, up, key, up_key)


def inspect_lora(path: Path) -> LoraInfo:
    """Parse a LoRA file's header; :class:`InvalidRequest` (param ``file``) if it is no LoRA."""
    path = Path(path)
    stat = path.stat()
    return _inspect_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=512)
def _inspect_cached(path: str, mtime_ns: int, size: int) -> LoraInfo:
    try:
        shapes = read_header(Path(path))
    except HeaderError as exc:
        raise InvalidRequest(str(exc), param="file") from None
    return lora_from_shapes(Path(path), shapes, size)


# --- base checkpoints -----------------------------------------------------------------

_FOLDER_FILES = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
    "text_encoder_2": "text_encoder_2/model.safetensors",
    "transformer": "transformer/diffusion_pytorch_model.safetensors",  # FLUX.1 / SD3.5 (diffusers format)
}


def base_shapes(entry: ModelEntry) -> BaseShapes:
    """Weight shapes of a checkpoint entry (cached while its files are unchanged)."""
    return _base_cached(entry.name, str(entry.path), entry.single_file, _fingerprint(entry))


def _fingerprint(entry: ModelEntry) -> tuple:
    if entry.single_file:
        files = [entry.path]
    else:
        files = [f for c in COMPONENTS for f in sorted((entry.path / c).glob("*"))
                 if f.suffix in (".json", ".safetensors")]
    stats = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            continue
        stats.append((file.name, stat.st_mtime_ns, stat.st_size))
    return tuple(stats)


@functools.lru_cache(maxsize=32)
def _base_cached(name: str, path: str, single_file: bool, fingerprint: tuple) -> BaseShapes:
    try:
        if single_file:
            return _single_file_shapes(name, read_header(Path(path)))
        return _folder_shapes(name, Path(path))
    except (HeaderError, OSError, ValueError, TypeError, AttributeError) as exc:  # odd JSON too
        raise ModelUnavailable(f"checkpoint {name!r}: cannot read its weights' headers ({exc})") from None


def _folder_shapes(name: str, folder: Path) -> BaseShapes:
    modules = {}
    for component, rel in _FOLDER_FILES.items():
        header = _component_header(folder / rel)
        if header is not None:
            modules[component] = _weights(component, header)
    config = folder / "unet" / "config.json"
    layout = UnetLayout.from_config(json.loads(config.read_text())) if config.is_file() else None
    return BaseShapes(name, modules, layout)


def _component_header(file: Path) -> dict[str, tuple[int, ...]] | None:
    """The header of ``file``, or of the shards its ``.index.json`` names; None if absent."""
    if file.is_file():
        return read_header(file)
    index = file.with_name(file.name + ".index.json")
    if not index.is_file():
        return None
    shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
    header = {}
    for shard in sorted(shards):
        # A shard name is a plain file name next to the index: nothing else is opened.
        if not isinstance(shard, str) or "/" in shard or "\\" in shard or not shard.endswith(".safetensors"):
            raise HeaderError(f"{index.name} names an unsafe shard {shard!r}")
        header |= read_header(index.parent / shard)
    return header


def _weights(component: str, header: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {_strip_text_model(component, k.removesuffix(".weight")): s
            for k, s in header.items() if k.endswith(".weight")}


def _single_file_shapes(name: str, header: dict[str, tuple[int, ...]]) -> BaseShapes:
    """An SGM (original Stability) single file, converted to diffusers module names."""
    unet_sgm = {k.removeprefix("model.diffusion_model."): s for k, s in header.items()
                if k.startswith("model.diffusion_model.")}
    layout = UnetLayout.from_sgm_keys(unet_sgm)
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    if unet_sgm and layout is not None:
        modules["unet"] = {}
        pairs = block_pairs(layout)
        for key, shape in unet_sgm.items():
            module = from_sgm(key.removesuffix(".weight"), pairs) if key.endswith(".weight") else None
            if module is not None:
                modules["unet"][module] = shape
    for index in (0, 1):
        hf = _prefixed(header, f"conditioner.embedders.{index}.transformer.")
        if hf:  # HF CLIP names: CLIP-L, the first text encoder
            modules["text_encoder"] = _weights("text_encoder", hf)
        open_clip = _prefixed(header, f"conditioner.embedders.{index}.model.")
        if open_clip:  # OpenCLIP names: bigG, the second text encoder (the refiner's only one)
            modules["text_encoder_2"] = open_clip_to_hf(open_clip)
    return BaseShapes(name, modules, layout)


def _prefixed(header: dict, prefix: str) -> dict:
    return {k[len(prefix):]: s for k, s in header.items() if k.startswith(prefix)}


# --- fitting --------------------------------------------------------------------------


def check_fits(lora: LoraInfo | Path, base: ModelEntry, *, param: str = "file") -> None:
    """Raise :class:`InvalidRequest` naming the first LoRA tensor that does not fit ``base``."""
    info = lora if isinstance(lora, LoraInfo) else inspect_lora(lora)
    shapes = base_shapes(base)
    lookups = {c: _lookup(shapes, c, info.format) for c in info.components}
    for target in info.targets:
        if target.component not in shapes.modules:
            raise InvalidRequest(f"LoRA tensor {target.key!r} adapts {target.component}, which checkpoint "
                                 f"{base.name!r} does not have", param=param)
        module = lookups[target.component].get(target.module)
        weight = shapes.modules[target.component].get(module) if module else None
        if weight is None:
            raise InvalidRequest(f"LoRA tensor {target.key!r} targets {target.component}.{target.module}, "
                                 f"which checkpoint {base.name!r} does not have", param=param)
        problem = _shape_problem(target, weight)
        if problem:
            raise InvalidRequest(f"LoRA tensor {problem[0]!r} does not fit checkpoint {base.name!r}: "
                                 f"{problem[1]}", param=param)


def _lookup(shapes: BaseShapes, component: str, fmt: str) -> dict[str, str]:
    """LoRA module name → base module name; kohya names are flattened with '_'."""
    modules = shapes.modules.get(component, {})
    if fmt != "kohya":
        return {m: m for m in modules}
    pairs = block_pairs(shapes.layout) if component == "unet" and shapes.layout else None
    table = {}
    for module in modules:
        table[module.replace(".", "_")] = module
        sgm = to_sgm(module, pairs) if pairs else None
        if sgm:
            table[sgm.replace(".", "_")] = module
    return table


def _shape_problem(target: LoraTarget, weight: tuple[int, ...]) -> tuple[str, str] | None:
    """(offending tensor, why) when the pair cannot adapt ``weight``; None when it fits."""
    down, up, key = target.down, target.up, target.key
    if len(weight) not in (2, 4):
        return key, f"the base weight {list(weight)} is neither a linear nor a convolution weight"
    if len(down) == 4 and len(weight) == 2:
        return key, f"a convolution LoRA {list(down)} on a linear weight {list(weight)}"
    if len(down) == 2 and len(weight) == 4 and weight[2:] != (1, 1):
        return key, f"a linear LoRA {list(down)} on a {weight[2]}x{weight[3]} convolution"
    if down[1] != weight[1] or (len(down) == 4 and down[2:] != weight[2:]):
        return key, f"down shape {list(down)} does not match the input side of weight {list(weight)}"
    if up[0] != weight[0]:
        return target.up_key, f"up shape {list(up)} does not match the output side of weight {list(weight)}"
    return None


def compatible_bases(lora_path: Path, registry) -> list[str]:
    """Names of the registry's checkpoints the LoRA fits (cached by files' mtime and size)."""
    try:
        stat = Path(lora_path).stat()
    except OSError:
        return []
    key = (str(lora_path), stat.st_mtime_ns, stat.st_size)
    return [e.name for e in registry.list(ModelKind.checkpoint) if _fits(key, e, _fingerprint(e))]


@functools.lru_cache(maxsize=4096)
def _fits(lora_key: tuple[str, int, int], entry: ModelEntry, fingerprint: tuple) -> bool:
    try:
        check_fits(_inspect_cached(*lora_key), entry)
    except (InvalidRequest, ModelUnavailable, OSError):
        return False
    return True
