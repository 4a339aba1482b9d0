"""Open-loop load: Poisson arrivals at several rates, latency against throughput.

``python -m bench.openloop`` serves the demo model in-process the way ``pixelmill serve``
does (job store, one worker, the engine thread, the default ``--max-batch-size``) and
submits jobs at exponentially spaced times, whether or not earlier ones finished (an
open loop: a closed loop's clients slow down with the server and hide its queueing).
Requests mix sizes and step counts. Per rate it reports the achieved throughput and the
p50/p95/p99 latency (arrival to the job's stored success), and, separately, how long
PNG encoding of a 1024² photo-like image takes at each zlib level (it is no longer in
the engine's device time: it runs in the encode pool).

The machine is shared: the 1-minute load average is sampled every second, and a run
whose load rose above ``--max-load`` is printed but not recorded (exit status 3).
torch/diffusers/transformers/peft versions come from ``locks/``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.gpu import lock_versions
from bench.stats import percentile

SIZES = (64, 96, 128)
STEPS = (2, 4)


@dataclass
class RatePoint:
    """One arrival rate and what came of it."""

    rate: float
    jobs: int
    throughput: float  # jobs per second, first arrival to last success
    latencies: list[float]
    failed: int

    def row(self) -> str:
        p = [percentile(self.latencies, q) * 1000 for q in (50, 95, 99)]
        return (f"| {self.rate:.2f} | {self.jobs} | {self.throughput:.2f} | {p[0]:.0f} | {p[1]:.0f} | "
                f"{p[2]:.0f} | {self.failed} |")


class LoadGuard:
    """Samples the 1-minute load average while a run lasts; remembers the highest."""

    def __init__(self) -> None:
        self.start = os.getloadavg()[0]
        self.highest = self.start
        self._task: asyncio.Task | None = None

    async def _sample(self) -> None:
        while True:
            self.highest = max(self.highest, os.getloadavg()[0])
            await asyncio.sleep(1.0)

    def __enter__(self) -> "LoadGuard":
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()


def mixed_request(rng: random.Random, index: int):
    from pixelmill.core.types import GenerationRequest

    size = rng.choice(SIZES)
    return GenerationRequest(prompt=f"open loop {index}: a harbour at dawn", width=size, height=size,
                             steps=rng.choice(STEPS), seed=index)


async def one_rate(services, rate: float, jobs: int, seed: int, timeout_s: float) -> RatePoint:
    """Submit ``jobs`` jobs at Poisson times of ``rate`` per second; wait for all."""
    rng = random.Random(seed)
    arrivals, requests, at = [], [], 0.0
    for index in range(jobs):
        at += rng.expovariate(rate)
        arrivals.append(at)
        requests.append(mixed_request(rng, index))
    start = time.perf_counter()

    async def job(index: int, arrive: float) -> tuple[float, float, bool]:
        await asyncio.sleep(max(0.0, start + arrive - time.perf_counter()))
        submitted = time.perf_counter()
        record, _ = await services.jobs.submit(requests[index])
        final = await services.jobs.wait(record.id, timeout=timeout_s)
        return submitted, time.perf_counter(), final.status.value == "succeeded"

    done = await asyncio.gather(*(job(i, a) for i, a in enumerate(arrivals)))
    latencies = [end - sent for sent, end, ok in done if ok]
    span = max(end for _, end, _ in done) - min(sent for sent, _, _ in done)
    return RatePoint(rate, jobs, len(latencies) / span if span > 0 else 0.0, latencies,
                     sum(1 for *_, ok in done if not ok))


def png_levels(levels=(0, 1, 6, 9), repeats: int = 3) -> list[tuple[int, float, float]]:
    """``(level, best ms, MB)`` encoding one 1024² photo-like image (gradients plus grain)."""
    import numpy as np
    from PIL import Image

    from pixelmill.core.types import OutputFormat
    from pixelmill.images.codecs import encode_image

    y, x = np.mgrid[0:1024, 0:1024]
    base = np.stack([128 + 100 * np.sin(x / 90.0), 128 + 90 * np.cos(y / 70.0), (x + y) / 8.0], -1)
    noise = np.random.default_rng(0).normal(0, 6, base.shape)
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    rows = []
    for level in levels:
        best, size = float("inf"), 0
        for _ in range(repeats):
            began = time.perf_counter()
            size = len(encode_image(image, OutputFormat.png, parameters="a prompt", png_level=level))
            best = min(best, time.perf_counter() - began)
        rows.append((level, best * 1000, size / 1e6))
    return rows


async def run(args: argparse.Namespace) -> tuple[list[RatePoint], LoadGuard]:
    from pixelmill.engine.demo import write_demo_models
    from pixelmill.server import build_services
    from pixelmill.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="bench-openloop-"))
    write_demo_models(root / "models", size=args.model_size)
    settings = Settings(models_dir=root / "models", model="demo", data_dir=root / "data",
                        db=f"sqlite:///{root / 'jobs.db'}", preview_steps=0)
    services = build_services(settings, workers=1)
    services.backends[0].start()
    worker = services.workers[0]
    task = asyncio.create_task(worker.run())
    try:
        while services.backends[0].state.value == "loading":
            await asyncio.sleep(0.1)
        await services.jobs.run(mixed_request(random.Random(0), -1))  # warm-up
        with LoadGuard() as guard:
            points = [await one_rate(services, rate, args.jobs, seed=i, timeout_s=args.timeout)
                      for i, rate in enumerate(args.rates)]
        return points, guard
    finally:
        await worker.shutdown(task, grace_s=10)
        services.backends[0].shutdown()


def report(points: list[RatePoint], guard: LoadGuard, pngs, args: argparse.Namespace) -> str:
    lines = [f"demo model ({args.model_size}), sizes {'/'.join(map(str, SIZES))} px, steps "
             f"{'/'.join(map(str, STEPS))}, default --max-batch-size, {args.jobs} jobs per rate",
             lock_versions(),
             f"1-minute load average: {guard.start:.2f} at start, {guard.highest:.2f} highest during the run "
             f"(limit {args.max_load}); {os.cpu_count()} cores",
             "", "| arrivals/s | jobs | done/s | p50 ms | p95 ms | p99 ms | failed |", "|---|---|---|---|---|---|---|"]
    lines += [point.row() for point in points]
    lines += ["", "PNG encoding of one 1024² photo-like image (outside the engine's device time):", "",
              "| zlib level | ms (best of 3) | MB |", "|---|---|---|"]
    lines += [f"| {level} | {ms:.0f} | {mb:.2f} |" for level, ms, mb in pngs]
    return "\n".join(lines)


def recordable(guard: LoadGuard, max_load: float) -> bool:
    """Whether a run's numbers say something about pixelmill rather than the neighbours."""
    return guard.highest <= max_load


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--model-size", choices=["tiny", "bench"], default="tiny")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--max-load", type=float, default=float(os.cpu_count() or 1),
                        help="refuse to record when the 1-minute load rose above this")
    parser.add_argument("--out", type=Path, help="append the section to this file (e.g. bench/RESULTS.md)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    points, guard = asyncio.run(run(args))
    text = report(points, guard, png_levels(), args)
    print(text)
    if not recordable(guard, args.max_load):
        print(f"not recorded: the load average rose to {guard.highest:.2f} (limit {args.max_load})", file=sys.stderr)
        return 3
    if args.out is not None:
        with args.out.open("a") as out:
            out.write(f"\n## bench.openloop — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
