"""Open-loop load: Poisson arrivals at several rates, latency against throughput.

``python -m bench.openloop`` serves the demo model in-process the way ``pixelmill serve``
does (job store, one worker, the engine thread, ``--max-batch-size`` at the server's
default unless told otherwise, never a sweep's best) and submits jobs at exponentially
spaced times, whether or not earlier ones finished (an open loop: a closed loop's clients
slow down with the server and hide its queueing). Requests mix sizes and step counts.
Per rate it reports the achieved throughput (mean over rounds with a 95 % t-interval)
and the p50/p95/p99 latency (arrival to the job's stored success, all rounds pooled),
and, separately, how long PNG encoding of a 1024² photo-like image takes at each zlib
level (it is no longer in the engine's device time: it runs in the encode pool).

**Paired rounds.** Every round also runs a burst of jobs through the job store and the
worker and, seconds before or after (the order alternates), the very same resolved
requests as direct backend calls in batches of ``--max-batch-size`` per batch key (the
in-process baseline). The server's share of the baseline is taken per round, so the
machine's drift between rounds cancels, and reported as the mean of the per-round ratios
with a 95 % t-interval and the median with a 95 % bootstrap interval (see
:func:`t_interval`, :func:`bootstrap_interval`).

The machine is shared: the 1-minute load average is sampled every second, and a run
whose load rose above ``--max-load`` is printed but not recorded (exit status 3).
torch/diffusers/transformers/peft versions come from ``locks/``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.gpu import lock_versions
from bench.machine import append_section
from bench.stats import median, percentile, ratio

SIZES = (64, 96, 128)
STEPS = (2, 4)


# Student's t, two-sided 95 %, by degrees of freedom (no scipy in the lock); 1.96 beyond.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


def t95(df: int) -> float:
    """The two-sided 95 % Student t quantile for ``df`` degrees of freedom (the table's
    next smaller entry between rows: a slightly wider, never narrower, interval)."""
    if df < 1:
        return float("nan")
    return _T95[max(k for k in _T95 if k <= df)] if df <= 120 else 1.960


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` with its 95 % t-interval (NaN bounds
    for fewer than two values: one round says nothing about the spread)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan"), float("nan")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def bootstrap_interval(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median of ``values`` (seeded: the same
    rounds give the same interval)."""
    values = [v for v in values if not math.isnan(v)]
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    medians = sorted(median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


@dataclass
class RatePoint:
    """One arrival rate in one round and what came of it."""

    rate: float
    jobs: int
    throughput: float  # jobs per second, first arrival to last success
    latencies: list[float]
    failed: int


def rate_row(points: list[RatePoint]) -> str:
    """One table row for one rate over all rounds: throughput as the mean over rounds with
    its 95 % t-interval, latency percentiles over every job of every round."""
    latencies = [latency for point in points for latency in point.latencies]
    p = [percentile(latencies, q) * 1000 for q in (50, 95, 99)]
    mean, low, high = t_interval([point.throughput for point in points])
    return (f"| {points[0].rate:.2f} | {sum(pt.jobs for pt in points)} | {mean:.2f} ({low:.2f}–{high:.2f}) | "
            f"{p[0]:.0f} | {p[1]:.0f} | {p[2]:.0f} | {sum(pt.failed for pt in points)} |")


@dataclass
class PairedRound:
    """One round's burst: jobs per second through the job store and worker, and of the same
    requests as direct backend calls (the in-process baseline), seconds apart."""

    served: float
    inprocess: float

    @property
    def ratio(self) -> float:
        """The server's share of the baseline's throughput in this round."""
        return ratio(self.served, self.inprocess)


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


def batches_of(requests: list, size: int) -> list[list]:
    """``requests`` grouped by batch key (first appearance first), in batches of at most
    ``size``: what a worker with ``--max-batch-size size`` makes of them when all are queued."""
    from pixelmill.core.batching import batch_key

    groups: dict[object, list] = {}
    for request in requests:
        groups.setdefault(batch_key(request), []).append(request)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


async def paired_round(services, jobs: int, seed: int, served_first: bool, timeout_s: float) -> PairedRound:
    """The same ``jobs`` mixed requests as one burst through the job store and the worker
    and as direct backend calls in batches of ``--max-batch-size``, one right after the other."""
    rng = random.Random(seed)
    requests = [mixed_request(rng, seed * 1000 + index) for index in range(jobs)]
    resolved = [services.jobs.prepare(request) for request in requests]
    backend, size = services.backends[0], services.settings.max_batch_size

    async def served() -> float:
        start = time.perf_counter()
        records = [(await services.jobs.submit(request))[0] for request in requests]
        finals = [await services.jobs.wait(record.id, timeout=timeout_s) for record in records]
        done = sum(final.status.value == "succeeded" for final in finals)
        return done / (time.perf_counter() - start)

    async def inprocess() -> float:
        start = time.perf_counter()
        for batch in batches_of(resolved, size):
            await backend.generate_batch(batch)
        return len(resolved) / (time.perf_counter() - start)

    if served_first:
        first = await served()
        return PairedRound(first, await inprocess())
    baseline = await inprocess()
    return PairedRound(await served(), baseline)


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


@dataclass
class Results:
    """Everything a run measured: rate points by rate (one per round) and the paired rounds."""

    points: dict[float, list[RatePoint]]
    rounds: list[PairedRound]
    max_batch_size: int


async def run(args: argparse.Namespace) -> tuple[Results, LoadGuard]:
    from pixelmill.engine.demo import write_demo_models
    from pixelmill.server import build_services
    from pixelmill.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="bench-openloop-"))
    write_demo_models(root / "models", size=args.model_size)
    settings = Settings(models_dir=root / "models", model="demo", data_dir=root / "data",
                        db=f"sqlite:///{root / 'jobs.db'}", preview_steps=0,
                        max_batch_size=args.max_batch_size)
    services = build_services(settings, workers=1)
    services.backends[0].start()
    worker = services.workers[0]
    task = asyncio.create_task(worker.run())
    try:
        while services.backends[0].state.value == "loading":
            await asyncio.sleep(0.1)
        await services.jobs.run(mixed_request(random.Random(0), -1))  # warm-up
        results = Results({rate: [] for rate in args.rates}, [], settings.max_batch_size)
        with LoadGuard() as guard:
            for r in range(args.rounds):
                shift = r % len(args.rates)  # no rate always follows the same one
                for rate in args.rates[shift:] + args.rates[:shift]:
                    point = await one_rate(services, rate, args.jobs, seed=r * 100 + args.rates.index(rate),
                                           timeout_s=args.timeout)
                    results.points[rate].append(point)
                results.rounds.append(await paired_round(services, args.burst, seed=r + 1,
                                                         served_first=r % 2 == 0, timeout_s=args.timeout))
        return results, guard
    finally:
        await worker.shutdown(task, grace_s=10)
        services.backends[0].shutdown()


def default_max_batch_size() -> int:
    """The server's own default ``--max-batch-size`` (what users run)."""
    from pixelmill.settings import Settings

    return Settings.model_fields["max_batch_size"].default


def report(results: Results, guard: LoadGuard, pngs, args: argparse.Namespace) -> str:
    default = default_max_batch_size()
    which = "the default" if results.max_batch_size == default else f"not the default {default}"
    ratios = [r.ratio for r in results.rounds]
    mean, low, high = t_interval(ratios)
    b_low, b_high = bootstrap_interval(ratios)
    lines = [f"demo model ({args.model_size}), sizes {'/'.join(map(str, SIZES))} px, steps "
             f"{'/'.join(map(str, STEPS))}, --max-batch-size {results.max_batch_size} ({which}), "
             f"{args.rounds} rounds of {args.jobs} jobs per rate and a paired burst of {args.burst}",
             lock_versions(),
             f"1-minute load average: {guard.start:.2f} at start, {guard.highest:.2f} highest during the run "
             f"(limit {args.max_load}); {os.cpu_count()} cores",
             "", "| arrivals/s | jobs | done/s, mean (95 % t-interval) | p50 ms | p95 ms | p99 ms | failed |",
             "|---|---|---|---|---|---|---|"]
    lines += [rate_row(points) for points in results.points.values()]
    lines += ["", f"Paired rounds: a burst of {args.burst} jobs through the job store and worker against the "
              f"same requests as direct backend calls in batches of {results.max_batch_size}:", "",
              "| round | served jobs/s | in-process jobs/s | ratio |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {r.served:.3f} | {r.inprocess:.3f} | {r.ratio:.3f} |"
              for i, r in enumerate(results.rounds)]
    lines += ["", f"Served / in-process over {len(ratios)} rounds: mean {mean:.3f} (95 % t-interval "
              f"{low:.3f}–{high:.3f}), median {median(ratios):.3f} (95 % bootstrap {b_low:.3f}–{b_high:.3f})"]
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
    parser.add_argument("--jobs", type=int, default=20, help="jobs per rate per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each: every rate, then a paired burst)")
    parser.add_argument("--burst", type=int, default=8, help="jobs in each round's paired burst")
    parser.add_argument("--max-batch-size", type=int, default=default_max_batch_size(),
                        help="the worker's batch limit; default: the server's own default")
    parser.add_argument("--model-size", choices=["tiny", "bench"], default="tiny")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--max-load", type=float, default=float(os.cpu_count() or 1),
                        help="refuse to record when the 1-minute load rose above this")
    parser.add_argument("--out", type=Path, help="append the section to this file (e.g. bench/RESULTS.md)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results, guard = asyncio.run(run(args))
    text = report(results, guard, png_levels(), args)
    print(text)
    if not recordable(guard, args.max_load):
        print(f"not recorded: the load average rose to {guard.highest:.2f} (limit {args.max_load})", file=sys.stderr)
        return 3
    if args.out is not None:
        append_section(args.out, "bench.openloop", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
