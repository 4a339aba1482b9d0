"""Paired rounds: every throughput case measured in turn, round after round, side by side.

On a shared 2-core machine the speed of one image drifts by ±20 % within minutes
(neighbours on the host, clock changes). A server measured three minutes after its
in-process baseline would be compared with a different machine, and a 5 % target
would be decided by the drift. So the baseline and the servers take turns: each round
runs every case once (the order rotates, so no case always follows the same one) and a
case's ratio to another is the **median of its per-round ratios**, each taken between
measurements seconds apart. Totals (images / seconds over all rounds) are reported
too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

from bench.load import HealthProber, LoadRun
from bench.stats import median, ratio

Measure = Callable[[int], LoadRun]
"""Runs a case once for round ``r`` (seeds/prompts derived from ``r``) and says what it made."""


@dataclass(frozen=True)
class Case:
    """One thing to measure each round, e.g. ``("sync", 8)``: pixelmill's OpenAI API, 8 clients."""

    kind: str
    clients: int
    measure: Measure
    probe: tuple[str, str] | None = None  # (server name, base URL): /health probed there while the case runs


@dataclass
class Rounds:
    """What every case made in every round."""

    runs: dict[tuple[str, int], list[LoadRun]] = field(default_factory=dict)
    health: dict[str, list[float]] = field(default_factory=dict)  # server name -> /health latencies

    def total(self, kind: str, clients: int) -> LoadRun | None:
        """All rounds of one case as one run (images and seconds summed)."""
        runs = self.runs.get((kind, clients))
        if not runs:
            return None
        return LoadRun(clients, sum(r.images for r in runs), sum(r.wall_s for r in runs),
                       [latency for r in runs for latency in r.latencies])

    def ratio(self, kind: str, clients: int, base: tuple[str, int]) -> float:
        """Median over rounds of this case's throughput divided by ``base``'s in the same round."""
        return median(self.per_round(kind, clients, base))

    def per_round(self, kind: str, clients: int, base: tuple[str, int]) -> list[float]:
        """This case's throughput divided by ``base``'s, round by round."""
        mine, theirs = self.runs.get((kind, clients), []), self.runs.get(base, [])
        return [ratio(a.throughput, b.throughput) for a, b in zip(mine, theirs)]


def run_rounds(cases: list[Case], rounds: int, result: Rounds, log: Callable[[str], None] = print) -> None:
    """Run ``rounds`` rounds of ``cases`` (rotating their order) and add the runs to ``result``."""
    for r in range(rounds):
        shift = r % len(cases)
        line = []
        for case in cases[shift:] + cases[:shift]:
            prober = HealthProber(case.probe[1]) if case.probe else nullcontext()
            with prober:
                run = case.measure(r)
            if case.probe:
                result.health.setdefault(case.probe[0], []).extend(prober.latencies)
            result.runs.setdefault((case.kind, case.clients), []).append(run)
            line.append(f"{case.kind} {run.throughput:.3f}")
        log(f"  round {r + 1}/{rounds}: " + ", ".join(line) + " img/s")


def inprocess_case(engine, *, batch: int, images: int, size: int, steps: int, clients: int, first: int) -> Case:
    """``images`` images from ``engine.generate_batch`` in calls of ``batch``, timed per call.

    ``clients`` only names the comparison the case serves (1: batch 1; N: best batch).
    """
    from bench.inprocess import requests_for

    def measure(r: int) -> LoadRun:
        made, seconds, counter = 0, 0.0, first + r * 1000
        latencies = []
        while made < images:
            requests = requests_for(batch, counter, size, steps)
            counter += batch
            started = time.perf_counter()
            engine.generate_batch(requests)
            latencies.append(time.perf_counter() - started)
            seconds += latencies[-1]
            made += batch
        return LoadRun(clients, made, seconds, latencies)

    return Case("inprocess", clients, measure)
