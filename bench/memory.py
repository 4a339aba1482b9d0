"""Resident memory with txt2img only vs all modes, measured in a fresh process.

Run as ``python -m bench.memory MODELS_DIR SIZE STEPS``: it loads the bench model the
way the engine does, reads its own RSS at each stage and prints one JSON line. A fresh
process keeps the numbers clean (the benchmark's own process has held other pipelines).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

STAGES = (
    ("python + torch + diffusers imported", "imported"),
    ("txt2img loaded", "txt2img_loaded"),
    ("after one txt2img generation", "txt2img_generated"),
    ("img2img + inpaint created (PipelineSet.get)", "all_modes_loaded"),
    ("after one generation in each mode", "all_modes_generated"),
)


def rss_mib() -> float:
    """This process's resident set size now, in MiB (from /proc, no dependencies)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _png(size: int, colour: tuple[int, int, int] | int, mode: str = "RGB") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _measure(models_dir: Path, size: int, steps: int) -> dict[str, float]:
    import diffusers  # noqa: F401  (counted in the "imported" baseline)
    import torch  # noqa: F401

    from pixelmill.core.types import GenerationRequest, Mode
    from pixelmill.engine.device import select_device
    from pixelmill.engine.generation import run_batch
    from pixelmill.engine.models import ModelSource, load_source
    from pixelmill.engine.pipelines import PipelineSet

    rss = {"imported": rss_mib()}
    device = select_device("auto")
    source = ModelSource("demo", "folder", str(models_dir / "checkpoints" / "demo"))
    pipes = PipelineSet(load_source(source, device, local_files_only=True), "demo", device)
    rss["txt2img_loaded"] = rss_mib()
    base = dict(prompt="memory", width=size, height=size, steps=steps, seed=1)
    run_batch(pipes, [GenerationRequest(**base)])
    rss["txt2img_generated"] = rss_mib()
    pipes.get(Mode.img2img)
    pipes.get(Mode.inpaint)
    rss["all_modes_loaded"] = rss_mib()
    init, mask = _png(size, (120, 80, 40)), _png(size, 255, "L")
    run_batch(pipes, [GenerationRequest(**base, mode=Mode.img2img, init_image=init, strength=0.6)])
    run_batch(pipes, [GenerationRequest(**base, mode=Mode.inpaint, init_image=init, mask_image=mask)])
    rss["all_modes_generated"] = rss_mib()
    return rss


def measure_rss(models_dir: Path, size: int, steps: int, env: dict[str, str]) -> dict[str, float]:
    """Run this module in a fresh interpreter and return its RSS per stage (MiB)."""
    command = [sys.executable, "-m", "bench.memory", str(models_dir), str(size), str(steps)]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(_measure(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
