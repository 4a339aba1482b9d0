"""SDXL-sized generation on the GPU path: seconds per image next to the published numbers.

``python -m bench.gpu`` runs the denoising loop and the VAE decode the way the engine does
(:func:`pixelmill.engine.device.prepare_pipeline`: SDPA, channels-last, fused QKV, the VAE
in its decode dtype, ``torch.compile`` with the inductor flags and static shapes; the
decode of :mod:`pixelmill.engine.vae`, uint8 on the device) at 1024², 30 steps, guidance
on, for batch 1 and 4, eager and compiled, fp16 and bf16, without and with a LoRA (rank 16
on every attention projection, in pixelmill's hot-swap slots) and without a LoRA again
after one (the slots switched off, QKV fused again).

With ``--model`` it loads real weights; without, an SDXL UNet and VAE are built from the
shipped SDXL config with random weights: the same shapes and the same FLOPs, so the same
time (prompt embeddings are random too; the text encoders, about 1 % of an SDXL
generation, are left out). ``--tiny`` runs the same code on the CPU with the tiny demo
model at 64 px and 2 steps, so a test keeps this module working; its numbers mean nothing.

The floor: an SDXL UNet step with guidance (batch 2 at 128x128 latents) is about 13.5 TFLOP,
so 30 steps need ``30 x 13.5 TFLOP / peak`` seconds per image at the GPU's dense fp16 peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.machine import append_section

PUBLISHED = [
    ("A100, fp16 + SDPA (diffusers guide)", 3.3),
    ("A100, + torch.compile", 2.5),
    ("A100, + compile + int8 dynamic quant", 2.4),
    ("H100, TensorRT", 1.5),
]
"""Published seconds per 1024² image at 30 steps (batch 1), for comparison."""
TFLOP_PER_CFG_STEP = 13.5
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "RTX 4090": 165.0, "A10": 125.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}
"""Dense fp16 tensor-core peaks (TFLOPS) by product name, for the floor."""


@dataclass
class Row:
    """One configuration and its measured seconds per image."""

    precision: str
    compiled: bool
    batch: int
    lora: str  # "none", "rank 16", "none after LoRA"
    seconds_per_image: list[float]
    first_call_s: float

    @property
    def median(self) -> float:
        return statistics.median(self.seconds_per_image)

    def label(self) -> str:
        return (f"{self.precision}, {'compile' if self.compiled else 'eager'}, batch {self.batch}, "
                f"LoRA: {self.lora}")


def peak_tflops(device_name: str) -> float | None:
    """The dense fp16 peak of a GPU named ``device_name`` (None when unknown)."""
    for name, peak in PEAK_TFLOPS.items():
        if name.lower() in device_name.lower():
            return peak
    return None


def floor_s(steps: int, peak: float | None, width: int = 1024, height: int = 1024) -> float | None:
    """Seconds per image at the peak: the UNet's FLOPs only (scale with the pixel count)."""
    if peak is None:
        return None
    return steps * TFLOP_PER_CFG_STEP * (width * height) / (1024 * 1024) / peak


def lock_versions(root: Path | None = None) -> str:
    """torch, diffusers, transformers and peft as pinned in ``locks/`` (the tested set)."""
    root = root or Path(__file__).resolve().parent.parent
    wanted, found = ("torch", "diffusers", "transformers", "peft"), {}
    for lock in sorted((root / "locks").glob("*.txt")):
        for line in lock.read_text().splitlines():
            name, sep, version = line.strip().partition("==")
            if sep and name.lower() in wanted:
                found.setdefault(name.lower(), version.split()[0].rstrip("\\").strip())
    return ", ".join(f"{name} {found.get(name, '?')}" for name in wanted) + " (locks/)"


# --- building the work ------------------------------------------------------------------------


def components(model: str | None, tiny: bool, device: str, dtype):
    """``(unet, vae, scheduler)``: real weights (``model``), the tiny demo, or SDXL-shaped random."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    if model:
        return (UNet2DConditionModel.from_pretrained(model, subfolder="unet", dtype=dtype),
                AutoencoderKL.from_pretrained(model, subfolder="vae", dtype=dtype),
                EulerDiscreteScheduler.from_pretrained(model, subfolder="scheduler"))
    if tiny:
        from pixelmill.engine.demo import write_demo_models

        root = Path(tempfile.mkdtemp(prefix="bench-gpu-")) / "models"
        write_demo_models(root, size="tiny")
        folder = root / "checkpoints" / "demo"
    else:
        from pixelmill.engine.loader import sdxl_config_dir

        folder = sdxl_config_dir()
    unet_config = UNet2DConditionModel.load_config(folder / "unet")
    vae_config = AutoencoderKL.load_config(folder / "vae")
    with torch_device(device):  # random init on the GPU: seconds instead of minutes
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
    if dtype != unet.dtype:  # (a no-op cast would only make diffusers warn)
        unet, vae = unet.to(dtype), vae.to(dtype)
    return unet, vae, EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(folder / "scheduler"))


def torch_device(device: str):
    import torch

    return torch.device(device)


def pipeline(unet, vae, scheduler, cfg):
    """An SDXL pipeline without text encoders, prepared as the engine prepares one."""
    from diffusers import StableDiffusionXLPipeline

    from pixelmill.engine.device import prepare_pipeline

    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return prepare_pipeline(pipe, cfg)


def embeddings(unet, batch: int, device: str, dtype) -> dict:
    """Random prompt embeddings of SDXL's shapes (77 tokens; pooled = the add-embedding's text part)."""
    import torch

    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    generator = torch.Generator("cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device, dtype)

    return {"prompt_embeds": rand(batch, 77, unet.config.cross_attention_dim),
            "negative_prompt_embeds": rand(batch, 77, unet.config.cross_attention_dim),
            "pooled_prompt_embeds": rand(batch, pooled), "negative_pooled_prompt_embeds": rand(batch, pooled)}


def random_lora(unet, rank: int):
    """A rank-``rank`` LoRA on every attention projection, as hot-swap slots hold one."""
    import torch

    from pixelmill.engine.hotswap import UnetLora

    generator = torch.Generator("cpu").manual_seed(1)
    layers = {}
    for name, module in unet.named_modules():
        if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")) and isinstance(module, torch.nn.Linear):
            a = torch.randn(rank, module.in_features, generator=generator) * 0.01
            b = torch.randn(module.out_features, rank, generator=generator) * 0.01
            layers[name] = (a, b, 1.0)
    return UnetLora(layers)


def run(pipe, cfg, *, batch: int, width: int, height: int, steps: int) -> float:
    """One generation of ``batch`` images through the engine's decode; seconds."""
    import torch

    from pixelmill.engine.vae import decode

    embeds = embeddings(pipe.unet, batch, cfg.device, cfg.dtype)
    if cfg.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        latents = pipe(**embeds, width=width, height=height, num_inference_steps=steps, guidance_scale=5.0,
                       output_type="latent", generator=[torch.Generator("cpu").manual_seed(i)
                                                        for i in range(batch)]).images
        decode(pipe, latents, cfg)  # uint8 on the host: synchronises
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> tuple[list[Row], str]:
    """Every configuration of ``args``; the rows and the device's name."""
    import torch

    from pixelmill.engine.adapters import QkvFusion
    from pixelmill.engine.device import select_device
    from pixelmill.engine.hotswap import UnetSlots

    rows: list[Row] = []
    device = "cpu" if args.tiny else "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    for precision in args.precision:
        for compiled in args.compile:
            cfg = select_device(device, compile=compiled, precision="auto" if precision == "fp32" else precision)
            if args.compile_backend and compiled:
                cfg = dataclasses.replace(cfg, _compile_backend=args.compile_backend)
            torch._dynamo.reset()
            unet, vae, scheduler = components(args.model, args.tiny, device, cfg.dtype)
            pipe = pipeline(unet, vae, scheduler, cfg)
            slots, fusion = None, QkvFusion(pipe)  # fused QKV (CUDA) off only while a LoRA runs
            for lora in args.lora:
                if lora != "none" and slots is None:
                    slots = UnetSlots(pipe.unet, 128)
                    part = random_lora(pipe.unet, 16)
                    slots.cover(part)
                fusion.use(lora == "none")  # as LoraCache.activate does (adapters.py)
                if slots is not None:
                    slots.assign([(part, 1.0)] if lora != "none" else [])
                for batch in args.batch:
                    first = run(pipe, cfg, batch=batch, width=args.size, height=args.size, steps=args.steps)
                    times = [run(pipe, cfg, batch=batch, width=args.size, height=args.size, steps=args.steps) / batch
                             for _ in range(args.repeats)]
                    label = "none after LoRA" if lora == "none" and slots is not None else (
                        "none" if lora == "none" else "rank 16")
                    rows.append(Row(precision if device == "cuda" else "fp32", compiled, batch, label, times, first))
                    print(f"  {rows[-1].label()}: {rows[-1].median:.3f} s/image (first call {first:.1f} s)",
                          file=sys.stderr, flush=True)
            del pipe, unet, vae, slots
            torch.cuda.empty_cache() if device == "cuda" else None
    return rows, name


def paired_lora(args: argparse.Namespace) -> list[str]:
    """The LoRA slot paths in interleaved rounds (a shared machine drifts between blocks):
    the plain UNet, the slotted UNet with a rank-16 LoRA, and the slotted UNet with its
    slots switched off; per-round ratios to the plain UNet, median and 5-95 % range."""
    import copy
    import random

    import torch

    from pixelmill.engine.adapters import QkvFusion
    from pixelmill.engine.device import select_device
    from pixelmill.engine.hotswap import UnetSlots

    device = "cpu" if args.tiny else "cuda"
    cfg = select_device(device, precision="auto" if args.tiny else args.precision[0])
    torch._dynamo.reset()
    unet, vae, scheduler = components(args.model, args.tiny, device, cfg.dtype)
    plain = pipeline(copy.deepcopy(unet), vae, scheduler, cfg)
    slotted = pipeline(unet, vae, copy.deepcopy(scheduler), cfg)
    fusion = QkvFusion(slotted)  # fused QKV (CUDA) off only while a LoRA runs, as in adapters.py
    slots = UnetSlots(slotted.unet, 128)
    part = random_lora(slotted.unet, 16)
    slots.cover(part)
    states = {"plain UNet (no LoRA ever)": (plain, None), "rank-16 LoRA in the slots": (slotted, [(part, 1.0)]),
              "no LoRA after a LoRA (slots off)": (slotted, [])}
    times: dict[str, list[float]] = {name: [] for name in states}
    order = list(states)
    for pipe, loras in states.values():  # warm each path once
        if loras is not None:
            fusion.use(not loras)
            slots.assign(loras)
        run(pipe, cfg, batch=1, width=args.size, height=args.size, steps=args.steps)
    for _ in range(args.paired_lora):
        random.shuffle(order)
        for name in order:
            pipe, loras = states[name]
            if loras is not None:
                fusion.use(not loras)
                slots.assign(loras)
            times[name].append(run(pipe, cfg, batch=1, width=args.size, height=args.size, steps=args.steps))
    base = times["plain UNet (no LoRA ever)"]
    lines = [f"LoRA paths, {args.paired_lora} interleaved rounds, batch 1 "
             f"({cfg.dtype}, eager, {args.size}x{args.size}, {args.steps} steps):", "",
             "| path | s/image (median) | vs plain (median of per-round ratios) | 5-95 % of ratios |",
             "|---|---|---|---|"]
    for name, values in times.items():
        ratios = sorted(v / b for v, b in zip(values, base))
        low, high = ratios[int(0.05 * (len(ratios) - 1))], ratios[int(round(0.95 * (len(ratios) - 1)))]
        lines.append(f"| {name} | {statistics.median(values):.3f} | {statistics.median(ratios):.2f}x | "
                     f"{low:.2f}-{high:.2f}x |")
    return lines


def report(rows: list[Row], device_name: str, args: argparse.Namespace, extra: list[str] = ()) -> str:
    """The markdown section: rows, then the published numbers and the floor."""
    peak = peak_tflops(device_name)
    floor = floor_s(args.steps, peak, args.size, args.size)
    weights = ("real weights " + args.model if args.model else
               "tiny demo model (a smoke run: numbers mean nothing)" if args.tiny else
               "random weights in SDXL's shapes")
    lines = [f"{device_name}; {args.size}x{args.size}, {args.steps} steps, guidance 5; {weights}",
             lock_versions()]
    if rows:
        lines += ["", "| configuration | s/image (median) | first call s | vs floor |", "|---|---|---|---|"]
    for row in rows:
        versus = f"{row.median / floor:.2f}x" if floor else "n/a"
        lines.append(f"| {row.label()} | {row.median:.3f} | {row.first_call_s:.1f} | {versus} |")
    if extra:
        lines += ["", *extra]
    lines += ["", "Published (1024², 30 steps, batch 1): "
              + "; ".join(f"{label} {seconds} s" for label, seconds in PUBLISHED) + ".",
              f"Floor: {TFLOP_PER_CFG_STEP} TFLOP per CFG step x {args.steps} steps"
              + (f" at {peak:.0f} TFLOPS dense fp16 = {floor:.3f} s/image." if floor else
                 f" (peak of {device_name!r} unknown).")]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a diffusers SDXL folder or hub id (default: random weights)")
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny demo model, 64 px, 2 steps (for tests)")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--precision", nargs="+", default=None, choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--compile", nargs="+", type=lambda v: v == "on", default=None,
                        metavar="on|off", help="default: off on")
    parser.add_argument("--compile-backend", default=None, help="tests: e.g. eager (no inductor)")
    parser.add_argument("--lora", nargs="+", default=["none", "rank16", "none"],
                        help="in order: none, rank16 (then none again: the no-LoRA path after a LoRA)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paired-lora", type=int, default=0, metavar="ROUNDS",
                        help="also measure the LoRA slot paths in this many interleaved rounds")
    parser.add_argument("--skip-matrix", action="store_true", help="only the paired LoRA rounds")
    parser.add_argument("--out", type=Path, help="append the markdown section to this file")
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.tiny else 1024)
    args.steps = args.steps or (2 if args.tiny else 30)
    args.precision = args.precision or (["fp32"] if args.tiny else ["fp16", "bf16"])
    args.compile = args.compile if args.compile is not None else ([False] if args.tiny else [False, True])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tiny:
        import torch

        if not torch.cuda.is_available():
            print("bench.gpu needs a CUDA GPU (use --tiny for the CPU smoke run)", file=sys.stderr)
            return 2
    rows, name = ([], "CPU" if args.tiny else __import__("torch").cuda.get_device_name()) \
        if args.skip_matrix else measure(args)
    text = report(rows, name, args, paired_lora(args) if args.paired_lora else [])
    print(text)
    if args.out is not None:
        append_section(args.out, "bench.gpu", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
