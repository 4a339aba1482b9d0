"""``python -m bench.serve``: the serving benchmark, every baseline measured in the same run.

Sections (the README's "Benchmarks" section explains how to read them):

1. in-process pipeline throughput: a sweep over batch 1, 2, 4, 8 finds the best batch —
   "the limit";
2. a tutorial-style FastAPI server (``bench.reference_server``) — the naive baseline;
3. pixelmill over HTTP: OpenAI sync endpoint and jobs + SSE, 1 and 8 clients, started
   with ``--max-batch-size`` set to the best batch of (1), as an operator tunes it;
4. ``/health`` latency while generating, pixelmill and reference;
5. LoRA load from disk vs switch between cached adapters (pixelmill's adapter cache);
6. RSS with txt2img only vs all modes (fresh process);
7. submit → start latency with an idle worker, on SQLite and PostgreSQL.

(1) at batch 1 and at the best batch, (2) and (3) are then measured in paired rounds
(:mod:`bench.paired`): every round runs each of them once, so each ratio compares
measurements taken seconds apart on this drifting machine.

Prints a table with ratios, PASS/FAIL per target, and appends the run to
``bench/RESULTS.md``. ``--quick`` is a smoke run with few repetitions (not recorded
unless ``--record``).
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no benchmark ever downloads weights
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import machine as host  # noqa: E402
from bench.load import closed_loop, job_call, openai_call, reference_call  # noqa: E402
from bench.report import Results, append_results, table, targets, targets_text  # noqa: E402

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
CLIENTS = 8


@dataclass(frozen=True)
class Plan:
    """How many repetitions each section gets (full run vs ``--quick``)."""

    batches: tuple[int, ...]
    min_images: int  # in-process images per batch size
    min_calls: int  # in-process calls per batch size
    single_rounds: int  # paired rounds of the 1-client cases (one image per case per round)
    multi_rounds: int  # paired rounds of the N-client cases
    per_client: int  # requests per client per round in the N-client cases
    lora_repeats: int
    queue_jobs: int

    @classmethod
    def for_args(cls, quick: bool) -> "Plan":
        if quick:
            return cls((1, 2, 4, 8), 2, 1, 2, 1, 1, 2, 5)
        return cls((1, 2, 4, 8), 8, 3, 20, 10, 1, 5, 30)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image width and height (default 256)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke run, not recorded")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                        help="append to bench/RESULTS.md (default: yes, except with --quick)")
    parser.add_argument("--results", type=Path, default=RESULTS_MD, help="results file to append to")
    parser.add_argument("--wait-load", type=float, default=0.8,
                        help="wait until the 1-minute load average is at most this (default 0.8; 0 = don't wait)")
    parser.add_argument("--max-wait-s", type=float, default=900, help="give up waiting for a quiet machine after this")
    parser.add_argument("--api-key", default=None, help="key to send if the servers enforce auth")
    parser.add_argument("--queue-steps", type=int, default=2, help="steps of the queue-overhead probe jobs")
    parser.add_argument("--skip", action="append", default=[], metavar="SECTION",
                        choices=["inprocess", "lora", "rss", "reference", "pixelmill", "queue", "postgres"],
                        help="leave a section out (repeatable); skipped targets are reported as SKIP")
    return parser.parse_args(argv)


def write_models(work: Path) -> Path:
    """The bench demo model (256×256 native, ~1 s per 20-step image on 2 CPU cores)."""
    from pixelmill.engine.demo import write_demo_models

    models = work / "models"
    write_demo_models(models, size="bench")
    return models


def run_inprocess(args, plan: Plan, models: Path, work: Path, results: Results):
    """The batch sweep and the LoRA section; returns the loaded engine for the paired rounds."""
    from bench.inprocess import load_engine, measure_lora, measure_throughput

    engine = None
    if "inprocess" not in args.skip:
        print("(1) in-process throughput: batch sweep", flush=True)
        engine = load_engine(models)
        results.inprocess = measure_throughput(engine, batches=list(plan.batches), min_images=plan.min_images,
                                               min_calls=plan.min_calls, size=args.size, steps=args.steps)
    if "lora" not in args.skip:
        print("(5) LoRA load and switch (pixelmill's adapter cache)", flush=True)
        results.lora = measure_lora(models, size=args.size, steps=args.steps, repeats=plan.lora_repeats)
    return engine


def run_rss(args, models: Path, results: Results) -> None:
    from bench.memory import measure_rss
    from tests.support.server import subprocess_env

    if "rss" not in args.skip:
        print("(6) RSS in a fresh process", flush=True)
        results.rss = measure_rss(models, args.size, args.steps, subprocess_env())


def run_throughput(args, plan: Plan, models: Path, work: Path, results: Results, engine) -> None:
    """Sections (1)–(4) in paired rounds, then (7) on the same pixelmill server (SQLite)."""
    from bench.procs import auth_headers, pixelmill_server, reference_server

    best = results.inprocess.best_batch if results.inprocess else None
    with ExitStack() as stack:
        pixelmill = reference = None
        if not {"pixelmill", "queue"} <= set(args.skip):
            batching = ["--max-batch-size", str(best)] if best else []
            print(f"(3) pixelmill serve, SQLite job store, {' '.join(batching) or 'default batching'}", flush=True)
            pixelmill = stack.enter_context(pixelmill_server(work / "pixelmill-sqlite", models, *batching))
            results.notes.append(f"pixelmill serve {' '.join(batching) or '(default batching)'}")
        if "reference" not in args.skip:
            print("(2) reference server (tutorial style)", flush=True)
            reference = stack.enter_context(reference_server(work, models))
        headers = auth_headers(pixelmill, args.api_key) if pixelmill else {}
        if "pixelmill" not in args.skip or reference is not None:
            _paired(args, plan, engine, best, pixelmill if "pixelmill" not in args.skip else None,
                    reference, headers, results)
        if engine is not None:
            engine.unload()
        if pixelmill is not None and "queue" not in args.skip:
            _queue(args, plan, pixelmill.url, headers, "SQLite", results)


def _paired(args, plan: Plan, engine, best: int | None, pixelmill, reference, headers: dict,
            results: Results) -> None:
    from bench.paired import Case, inprocess_case, run_rounds

    size, steps = args.size, args.steps
    for clients, rounds, per_client in ((1, plan.single_rounds, 1), (CLIENTS, plan.multi_rounds, plan.per_client)):
        cases, images = [], clients * per_client
        if engine is not None:
            batch = 1 if clients == 1 else best
            cases.append(inprocess_case(engine, batch=batch, images=images, size=size, steps=steps,
                                        clients=clients, first=clients * 100_000))
        servers = []
        if reference is not None:
            servers.append(("reference", reference.url, reference_call(reference.url, size, steps)))
        if pixelmill is not None:
            servers.append(("sync", pixelmill.url, openai_call(pixelmill.url, size, steps, headers)))
            servers.append(("jobs", pixelmill.url, job_call(pixelmill.url, size, steps, headers)))
        for offset, (kind, url, call) in enumerate(servers, start=1):
            if clients == 1:
                closed_loop(1, 1, call, first=0)  # warm-up: first call of each API
            elif kind != "reference":
                closed_loop(CLIENTS, 1, call, first=10)  # warm-up: a full concurrent round (largest batch)
            first = clients * 100_000 + offset * 10_000
            probe = None if clients == 1 else ("reference" if kind == "reference" else "pixelmill", url)
            cases.append(Case(kind, clients, _load_measure(clients, per_client, call, first), probe))
        print(f"(1)–(4) {clients} client(s): {rounds} paired rounds of {', '.join(c.kind for c in cases)}",
              flush=True)
        run_rounds(cases, rounds, results.rounds)


def _load_measure(clients: int, per_client: int, call, first: int):
    def measure(r: int):
        return closed_loop(clients, per_client, call, first=first + r * clients * per_client)
    return measure


def _queue(args, plan: Plan, url: str, headers: dict, store: str, results: Results) -> None:
    from bench.queue import measure_queue

    print(f"(7) queue overhead, {store}", flush=True)
    results.queues.append(measure_queue(url, headers, jobs=plan.queue_jobs, size=args.size,
                                        steps=args.queue_steps, store=store))


def run_postgres(args, plan: Plan, models: Path, work: Path, results: Results) -> None:
    from bench.procs import auth_headers, pixelmill_server
    from bench.queue import QueueRun

    if "queue" in args.skip or "postgres" in args.skip:
        return
    from tests.support.postgres import PostgresUnavailable, postgres_url

    with ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_url())  # a fresh database, dropped afterwards
        except PostgresUnavailable as exc:
            print(f"(7) PostgreSQL skipped: {exc}", flush=True)
            results.queues.append(QueueRun("PostgreSQL", skipped=str(exc)))
            return
        with pixelmill_server(work / "pixelmill-pg", models, "--db", url) as server:
            _queue(args, plan, server.url, auth_headers(server, args.api_key), "PostgreSQL", results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. from `timeout`) must unwind the context managers that stop the servers
    # under test; the default action would leave them running as orphans.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    record = (not args.quick) if args.record is None else args.record
    command = ("python -m bench.serve " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    if args.wait_load > 0 and not host.wait_until_quiet(args.wait_load, args.max_wait_s):
        print(f"machine still busy (load {host.loadavg()}): measuring anyway, noted in the results", flush=True)
    load_start, started = host.loadavg(), time.monotonic()
    results = Results(size=args.size, steps=args.steps)
    plan = Plan.for_args(args.quick)
    with tempfile.TemporaryDirectory(prefix="pixelmill-bench-") as tmp:
        work = Path(tmp)
        models = write_models(work)
        engine = run_inprocess(args, plan, models, work, results)
        run_rss(args, models, results)
        run_throughput(args, plan, models, work, results, engine)
        run_postgres(args, plan, models, work, results)
    load_end = host.loadavg()
    if host.one_minute_load() > max(args.wait_load, 0.8) or float(load_start.split()[0]) > max(args.wait_load, 0.8):
        results.notes.append("the machine was shared with other workloads during this run (see load averages)")
    results.notes.append(f"run took {time.monotonic() - started:.0f} s" + (" (--quick)" if args.quick else ""))
    verdicts = targets(results)
    print("\n" + table(results) + "\n\nTargets:\n" + targets_text(verdicts))
    print(f"\nload average at start {load_start}, at end {load_end}")
    if record:
        append_results(args.results, command=command, machine=host.machine(), load_start=load_start,
                       load_end=load_end, r=results, verdicts=verdicts)
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
