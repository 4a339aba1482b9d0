"""Images per hour per model family and step count, on the bench-size demo models.

    python -m bench.families [--steps-sdxl 4,30] [--steps-flux 4,28] [--steps-sd3 4,28] [--repeats 3]
                             [--record]

Writes the **bench** demo models of every family (``pixelmill demo-model --size bench``:
256x256 native) into a temporary folder, loads each through the engine (the same loader,
pipelines and ``Engine.generate`` the server uses; one model loaded at a time) and times
one-image txt2img calls at each step count: a warm-up call, then the median of
``--repeats`` calls. images/hour = 3600 / median seconds. The demo models are random and
tiny, so the rows compare the families' *pipeline* costs per step on this machine (text
encoding, denoising steps, VAE decode), not real FLUX/SD3.5 speed; what carries over is how
the step count moves images/hour (the few-step what-if of the cost model).

``--record`` appends a section to bench/RESULTS.md (command, versions, load before/after).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODELS = {"sdxl": "demo", "flux": "demo-flux-schnell", "flux-dev": "demo-flux", "sd3": "demo-sd3"}


def measure(engine, model: str, steps: int, repeats: int) -> float:
    """Median seconds of a one-image 256x256 txt2img call (after one warm-up call)."""
    from pixelmill.core.types import GenerationRequest

    def once(seed: int) -> float:
        request = GenerationRequest(prompt=f"a lighthouse at dusk {seed}", model=model, steps=steps, seed=seed,
                                    width=256, height=256, guidance=0.0 if model == "demo-flux-schnell" else None)
        started = time.perf_counter()
        engine.generate(request)
        return time.perf_counter() - started

    once(0)
    return statistics.median(once(seed) for seed in range(1, repeats + 1))


def run(steps: dict[str, list[int]], repeats: int) -> list[tuple[str, str, int, float]]:
    """``(family, model, steps, seconds)`` rows."""
    import torch

    from pixelmill.engine.demo import write_demo_models
    from pixelmill.engine.engine import Engine
    from pixelmill.registry.models_dir import ModelRegistry
    from pixelmill.settings import Settings

    torch.set_num_threads(1)  # steadier on a shared machine (see the preview benchmark's notes)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pixelmill-bench-families-") as tmp:
        models = Path(tmp) / "models"
        write_demo_models(models, size="bench", families=("sdxl", "flux", "sd3"))
        settings = Settings(models_dir=models, model="demo", data_dir=Path(tmp) / "data", device="cpu",
                            preview_steps=0)
        engine = Engine(settings, ModelRegistry(models))
        engine.start()
        for family, model in MODELS.items():
            for count in steps[family]:
                seconds = measure(engine, model, count, repeats)
                rows.append((family, model, count, seconds))
                print(f"{family:9} {model:18} {count:3d} steps  {seconds:7.3f} s/image  {3600 / seconds:9.0f} images/hour",
                      flush=True)
        engine.unload()
    return rows


def _steps(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def record(rows, command: str, load_before: str, load_after: str, took: float) -> None:
    """Append this run as a section of bench/RESULTS.md."""
    import diffusers
    import peft
    import torch
    import transformers

    from bench.machine import machine

    info = machine()
    lines = [
        "", f"## {info.date} — model families: images/hour per family and step count, 256×256, bench demo models", "",
        f"Command: `{command}`", "",
        *(f"- {line}" for line in info.lines()),
        f"- transformers {transformers.__version__}, peft {peft.__version__} (torch {torch.__version__}, "
        f"diffusers {diffusers.__version__})",
        f"- load average (1, 5, 15 min) at start: {load_before}; at end: {load_after}",
        "- note: the machine is shared with other agents' test suites (see the load averages); torch on 1 thread",
        f"- note: run took {took:.0f} s; one image per call (batch 1), median of the timed calls after a warm-up",
        "", "| family | demo model | steps | s / image | images / hour |", "|---|---|---|---|---|",
        *(f"| {family} | {model} | {steps} | {seconds:.3f} | {3600 / seconds:,.0f} |"
          for family, model, steps, seconds in rows),
        "",
        "The demo models are random-weight and tiny (bench size): the rows compare pipeline costs per step "
        "across families on this CPU, not real FLUX.1/SD3.5 throughput. Within a family, the few-step row "
        "against the full-step row is the measured speed-up a few-step model buys on this machine.",
    ]
    results = Path(__file__).with_name("RESULTS.md")
    with results.open("a", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    from bench.machine import loadavg

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-sdxl", default="4,30")
    parser.add_argument("--steps-flux", default="4", help="FLUX.1-schnell-like demo")
    parser.add_argument("--steps-flux-dev", default="28", help="FLUX.1-dev-like demo")
    parser.add_argument("--steps-sd3", default="4,28")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args(argv)
    steps = {"sdxl": _steps(args.steps_sdxl), "flux": _steps(args.steps_flux),
             "flux-dev": _steps(args.steps_flux_dev), "sd3": _steps(args.steps_sd3)}
    before, started = loadavg(), time.perf_counter()
    rows = run(steps, args.repeats)
    if args.record:
        record(rows, "python -m bench.families " + " ".join(argv if argv is not None else sys.argv[1:]),
               before, loadavg(), time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
