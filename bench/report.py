"""Turn one run's measurements into the printed table, the target verdicts and RESULTS.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.inprocess import LoraTimes, Throughput
from bench.machine import Machine
from bench.memory import STAGES
from bench.paired import Rounds
from bench.queue import QueueRun
from bench.stats import median, percentile, ratio


@dataclass
class Results:
    """Everything one ``python -m bench.serve`` run measured (None = not measured)."""

    size: int
    steps: int
    inprocess: Throughput | None = None
    lora: LoraTimes | None = None
    rss: dict[str, float] | None = None
    rounds: Rounds = field(default_factory=Rounds)  # in-process, reference and pixelmill, side by side
    queues: list[QueueRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """One target line: what was required, what was measured, and whether it held."""

    name: str
    measured: str
    passed: bool | None  # None: could not be measured in this run

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]


def _x(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}×"


def _ms(values: list[float], q: float) -> str:
    return "n/a" if not values else f"{percentile(values, q) * 1000:.1f} ms"


SERVERS = (("reference", "(2) reference server"), ("sync", "(3) pixelmill OpenAI sync"),
           ("jobs", "(3) pixelmill jobs + SSE"))
"""Paired-round case kinds that are HTTP servers, with their table labels."""


def _clients(r: Results) -> list[int]:
    return sorted({clients for _, clients in r.rounds.runs})


def _baseline(clients: int, ip: Throughput | None) -> str:
    if clients == 1:
        return "batch 1"
    return f"best batch ({ip.best_batch})" if ip else "best batch"


def _throughput_rows(r: Results) -> list[tuple[str, str, str, str]]:
    """(measurement, value, vs in-process, vs reference) rows for images/s."""
    ip, rounds = r.inprocess, r.rounds
    rows = []
    if ip is not None:
        for batch, value in ip.per_batch.items():
            best = " (best)" if batch == ip.best_batch else ""
            rows.append((f"(1) in-process sweep, batch {batch}{best}", f"{value:.3f} img/s",
                         _x(ratio(value, ip.batch1)), ""))
    for clients in _clients(r):
        base = ("inprocess", clients)
        total = rounds.total(*base)
        if total is not None:
            rows.append((f"(1) in-process, {_baseline(clients, ip)}, paired rounds", f"{total.throughput:.3f} img/s",
                         "1.00×", ""))
        if clients > 1 and rounds.total(*base) and rounds.total("reference", clients):
            ceiling = rounds.ratio("inprocess", clients, ("reference", clients))
            rows.append((f"(1) ÷ (2): ceiling for any server over the reference, {clients} clients",
                         _x(ceiling), "", "in-process best batch vs reference"))
        for kind, label in SERVERS:
            total = rounds.total(kind, clients)
            if total is None:
                continue
            vs_ref = "" if kind == "reference" else _x(rounds.ratio(kind, clients, ("reference", clients)))
            rows.append((f"{label}, {clients} client{'s' if clients > 1 else ''}", f"{total.throughput:.3f} img/s",
                         f"{_x(rounds.ratio(kind, clients, base))} of {_baseline(clients, ip)}", vs_ref))
    return rows


def _other_rows(r: Results) -> list[tuple[str, str, str, str]]:
    rows = []
    health = r.rounds.health
    for label, samples in (("(4) /health while generating, pixelmill", health.get("pixelmill", [])),
                           ("(4) /health while generating, reference", health.get("reference", []))):
        if samples:
            rows.append((label, f"p50 {_ms(samples, 50)}, p99 {_ms(samples, 99)} (n={len(samples)})", "", ""))
    if r.lora is not None:
        gen = r.inprocess.one_image_s if r.inprocess else r.lora.one_generation_s
        for label, value in (("(5) LoRA: first adapter from disk", r.lora.first_from_disk_s),
                             ("(5) LoRA: another adapter from disk (median)", median(r.lora.from_disk_s)),
                             ("(5) LoRA: switch between cached adapters (median)", median(r.lora.cached_switch_s)),
                             ("(5) one generation with an adapter active", r.lora.one_generation_s)):
            rows.append((label, f"{value * 1000:.1f} ms", f"{ratio(value, gen):.1%} of one generation", ""))
    if r.rss is not None:
        for title, key in STAGES:
            rows.append((f"(6) RSS, {title}", f"{r.rss[key]:.0f} MiB",
                         _x(ratio(r.rss[key], r.rss["txt2img_generated"])) + " of txt2img", ""))
    for q in r.queues:
        if q.skipped:
            rows.append((f"(7) queue overhead, {q.store}", f"skipped: {q.skipped}", "", ""))
            continue
        for label, values in (("POST returned → started_at", q.returned_to_started),
                              ("created_at → started_at", q.created_to_started),
                              ("POST returned → SSE started", q.returned_to_sse_started)):
            rows.append((f"(7) {q.store}: {label}", f"p50 {_ms(values, 50)}, p99 {_ms(values, 99)} (n={len(values)})",
                         "", ""))
    return rows


def table(r: Results) -> str:
    """The run as a Markdown table (readable in a terminal too)."""
    head = ["| measurement | value | vs in-process (1) | vs reference (2), same clients |",
            "|---|---|---|---|"]
    rows = _throughput_rows(r) + _other_rows(r)
    return "\n".join(head + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows])


def _throughput_targets(r: Results) -> list[Target]:
    targets, rounds = [], r.rounds
    many = max(_clients(r), default=1)
    for kind, name in (("sync", "OpenAI sync"), ("jobs", "jobs + SSE")):
        if rounds.total(kind, 1) and rounds.total("inprocess", 1):
            value = rounds.ratio(kind, 1, ("inprocess", 1))
            targets.append(Target(f"pixelmill {name}, 1 client ≥ 0.95 × in-process batch 1", _x(value), value >= 0.95))
        if many > 1 and rounds.total(kind, many) and rounds.total("inprocess", many):
            value = rounds.ratio(kind, many, ("inprocess", many))
            targets.append(Target(f"pixelmill {name}, {many} clients ≥ 0.9 × in-process "
                                  f"{_baseline(many, r.inprocess)}", _x(value), value >= 0.9))
        if many > 1 and rounds.total(kind, many) and rounds.total("reference", many):
            value = rounds.ratio(kind, many, ("reference", many))
            targets.append(Target(f"pixelmill {name}, {many} clients ≥ 1.6 × reference server", _x(value), value >= 1.6))
    return targets


def targets(r: Results) -> list[Target]:
    """Every target of the suite, evaluated on this run's numbers."""
    result = _throughput_targets(r)
    if r.rounds.health.get("pixelmill"):
        p99 = percentile(r.rounds.health["pixelmill"], 99)
        result.append(Target("/health p99 < 50 ms while generating", f"{p99 * 1000:.1f} ms", p99 < 0.050))
    if r.lora is not None and r.inprocess is not None:
        share = ratio(median(r.lora.cached_switch_s), r.inprocess.one_image_s)
        result.append(Target("cached LoRA switch ≤ 10 % of one generation", f"{share:.1%}", share <= 0.10))
    for q in r.queues:
        name = f"queue overhead p50 < 20 ms ({q.store})"
        if q.skipped:
            result.append(Target(name, q.skipped, None))
        else:
            p50 = percentile(q.returned_to_started, 50)
            result.append(Target(name, f"{p50 * 1000:.1f} ms", p50 < 0.020))
    return result


def targets_text(items: list[Target]) -> str:
    return "\n".join(f"- {t.verdict}: {t.name} — measured {t.measured}" for t in items)


def append_results(path: Path, *, command: str, machine: Machine, load_start: str, load_end: str,
                   r: Results, verdicts: list[Target]) -> None:
    """Append this run as a new section of ``RESULTS.md`` (never rewrites earlier runs)."""
    lines = [
        "", f"## {machine.date} — {r.size}×{r.size}, {r.steps} steps, bench model", "",
        f"Command: `{command}`", "",
        *(f"- {line}" for line in machine.lines()),
        f"- load average (1, 5, 15 min) at start: {load_start}; at end: {load_end}",
        *(f"- note: {note}" for note in r.notes),
        "", table(r), "", "Targets:", "", targets_text(verdicts), "",
    ]
    if not path.exists():
        path.write_text("# pixelmill benchmark results\n\nAppended by `python -m bench.serve`; newest last.\n")
    with path.open("a") as out:
        out.write("\n".join(lines))
