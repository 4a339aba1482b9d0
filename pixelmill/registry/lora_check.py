"""Check a LoRA file against a base checkpoint from safetensors headers alone.

Only the 8-byte length and the JSON header of each file are read (never the tensor
data, never torch): a LoRA's tensor names and shapes are parsed, paired into
down/up halves, and each target is matched with the base model's weight of the same
module. Recognised formats:

* ``peft``: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (diffusers today; also
  ai-toolkit's FLUX LoRAs, ``transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight``);
* ``diffusers``: ``<component>.<module>.lora.down.weight`` / ``lora.up.weight``, also
  ``lora_linear_layer.down/up`` and the old ``processor.to_q_lora.down`` names;
* ``kohya``: ``lora_unet_…`` / ``lora_te1_…`` / ``lora_te2_…`` with ``.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha``; UNet names may be diffusers' or SGM's (flattened), and
  FLUX.1 ones (``lora_unet_double_blocks_0_img_attn_qkv``) name BFL's fused transformer modules;
* ``bfl``: BFL module names with kohya halves as ComfyUI saves them
  (``diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight``, CLIP-L under
  ``text_encoders.clip_l.transformer.``). Both FLUX formats load through diffusers' converters.

Base shapes come from a diffusers folder (``unet/``, ``text_encoder/``, ``text_encoder_2/``,
``transformer/``, sharded or not), a single-file SGM checkpoint or a BFL FLUX.1 transformer
file, converted to diffusers module names (and, for FLUX, BFL's too: ``flux_names``).
Kohya files often name UNet modules the SGM way (``input_blocks.4.1…``): :func:`block_pairs`
maps diffusers blocks to SGM blocks.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pixelmill.core.errors import InvalidRequest, ModelUnavailable
from pixelmill.registry.flux_names import BFL_ROOTS, is_flux_transformer, with_bfl_names, with_diffusers_names
from pixelmill.registry.models_dir import ModelEntry, ModelKind
from pixelmill.registry.safetensors_header import MAX_HEADER_BYTES, HeaderError, read_header  # noqa: F401
from pixelmill.registry.sgm_names import UnetLayout, block_pairs, to_sgm, from_sgm, open_clip_to_hf

COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "transformer")  # transformer: FLUX.1 / SD3.5
_KOHYA_COMPONENTS = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2",
                     "diffusion_model": "transformer", "text_encoders.clip_l.transformer": "text_encoder"}
_PART = r"^(unet|text_encoder|text_encoder_2|transformer)\.(.+)"
_BFL = r"^(diffusion_model|text_encoders\.clip_l\.transformer)\.(.+)"
# (format, pattern); an alpha's format is that of its file's other tensors (None: any).
_KEY_PATTERNS: list[tuple[str | None, re.Pattern[str]]] = [
    ("peft", re.compile(_PART + r"\.lora_(A|B)\.weight$")),
    ("diffusers", re.compile(_PART + r"\.(?:lora|lora_linear_layer)\.(down|up)\.weight$")),
    ("diffusers", re.compile(r"^(unet)\.(.+\.processor\.to_(?:q|k|v|out))_lora\.(down|up)\.weight$")),
    ("kohya", re.compile(r"^lora_(unet|te|te1|te2)_(.+)\.lora_(down|up)\.weight$")),
    ("kohya", re.compile(r"^lora_(unet|te|te1|te2)_(.+)\.(alpha)$")),
    ("bfl", re.compile(_BFL + r"\.lora_(down|up)\.weight$")),
    ("bfl", re.compile(_BFL + r"\.(alpha)$")),
    (None, re.compile(_PART + r"\.(alpha)$")),
]
_HALF = {"A": "down", "B": "up", "down": "down", "up": "up", "alpha": "alpha"}


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

    @property
    def family(self) -> str | None:
        """``sdxl`` (a UNet), ``flux`` (FLUX.1 block names), ``sd3`` (MMDiT ``context_block``
        names), or None when the names fit more than one (attention-only transformer LoRAs)."""
        modules = {t.module for t in self.targets if t.component == "transformer"}
        if "unet" in self.components:
            return "sdxl"
        if any(m.startswith(BFL_ROOTS) or m.startswith("single_transformer_blocks") for m in modules):
            return "flux"
        if any("context_block" in m or m.startswith("pos_embed") for m in modules):
            return "sd3"
        return None


@dataclass(frozen=True)
class BaseShapes:
    """Weight shapes of a base checkpoint: component → diffusers module name → shape."""

    name: str
    modules: dict[str, dict[str, tuple[int, ...]]]
    layout: UnetLayout | None


# --- LoRA files -----------------------------------------------------------------------


def _parse_key(key: str) -> tuple[str, str, str, str]:
    """(format, component, module, half) of one LoRA tensor name."""
    for fmt, pattern in _KEY_PATTERNS:
        match = pattern.match(key)
        if match:
            component, module, half = match.groups()
            component = _KOHYA_COMPONENTS.get(component, component)
            if component == "unet" and fmt == "kohya" and module.startswith(BFL_ROOTS):
                component = "transformer"  # FLUX.1: kohya names BFL's transformer modules
            if ".processor.to_" in module:  # old attention-processor names
                stem, proj = module.split(".processor.to_")
                module = f"{stem}.to_{'out.0' if proj == 'out' else proj}"
            return fmt, component, _strip_text_model(component, module), _HALF[half]
    raise InvalidRequest(
        f"tensor {key!r} is not a LoRA tensor of a supported format (diffusers/peft 'unet.…lora_A.weight', "
        "'lora.down.weight', kohya 'lora_unet_…/lora_te1_…/lora_te2_…' or BFL 'diffusion_model.….lora_down')",
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
        formats.add(fmt)
        halves.setdefault((component, module), {})[half] = (shape, key)
    formats.discard(None)
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
    if is_flux_transformer(modules.get("transformer", {})):
        modules["transformer"] = with_bfl_names(modules["transformer"])  # kohya/BFL LoRAs name these
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
    """An SGM (original Stability) single file, converted to diffusers module names, or a
    FLUX.1 transformer file (BFL or diffusers layout) under both layouts' names."""
    flux = _weights("transformer", {k.removeprefix("model.diffusion_model."): s for k, s in header.items()})
    if is_flux_transformer(flux):
        return BaseShapes(name, {"transformer": with_bfl_names(with_diffusers_names(flux))}, None)
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
