"""``python -m bench.serve``: the serving benchmark, every baseline measured in the same run.

Sections (the README's "Benchmarks" section explains how to read them):

1. in-process pipeline throughput at batch 1, 2, 4, 8 — "the limit";
2. a tutorial-style FastAPI server (``bench.reference_server``) — the naive baseline;
3. pixelmill over HTTP: OpenAI sync endpoint and jobs + SSE, 1 and 8 clients;
4. ``/health`` latency while generating, pixelmill and reference;
5. LoRA load from disk vs switch between cached adapters (pixelmill's adapter cache);
6. RSS with txt2img only vs all modes (fresh process);
7. submit → start latency with an idle worker, on SQLite and PostgreSQL.

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
from bench.load import HealthProber, closed_loop, job_call, openai_call, reference_call  # noqa: E402
from bench.report import Results, append_results, table, targets, targets_text  # noqa: E402

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
CLIENTS = 8


@dataclass(frozen=True)
class Plan:
    """How many repetitions each section gets (full run vs ``--quick``)."""

    batches: tuple[int, ...]
    min_images: int  # in-process images per batch size
    min_calls: int  # in-process calls per batch size
    single_requests: int  # requests of the 1-client runs
    per_client: int  # requests per client in the N-client runs
    lora_repeats: int
    queue_jobs: int

    @classmethod
    def for_args(cls, quick: bool) -> "Plan":
        if quick:
            return cls((1, 2, 4, 8), 2, 1, 2, 1, 2, 5)
        return cls((1, 2, 4, 8), 8, 3, 8, 3, 5, 30)


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


def run_inprocess(args, plan: Plan, models: Path, work: Path, results: Results) -> None:
    from bench.inprocess import load_engine, measure_lora, measure_throughput

    if "inprocess" not in args.skip:
        print("(1) in-process throughput", flush=True)
        engine = load_engine(models)
        results.inprocess = measure_throughput(engine, batches=list(plan.batches), min_images=plan.min_images,
                                               min_calls=plan.min_calls, size=args.size, steps=args.steps)
        engine.unload()
        del engine
        gc.collect()
    if "lora" not in args.skip:
        print("(5) LoRA load and switch (pixelmill's adapter cache)", flush=True)
        results.lora = measure_lora(models, size=args.size, steps=args.steps, repeats=plan.lora_repeats)


def run_rss(args, models: Path, results: Results) -> None:
    from bench.memory import measure_rss
    from tests.support.server import subprocess_env

    if "rss" not in args.skip:
        print("(6) RSS in a fresh process", flush=True)
        results.rss = measure_rss(models, args.size, args.steps, subprocess_env())


def run_reference(args, plan: Plan, models: Path, work: Path, results: Results) -> None:
    from bench.procs import reference_server

    if "reference" in args.skip:
        return
    print("(2) reference server (tutorial style)", flush=True)
    with reference_server(work, models) as server:
        call = reference_call(server.url, args.size, args.steps)
        closed_loop(1, 1, call, first=0)  # warm-up
        results.reference[1] = closed_loop(1, plan.single_requests, call, first=100)
        with HealthProber(server.url) as prober:
            results.reference[CLIENTS] = closed_loop(CLIENTS, plan.per_client, call, first=200)
        results.health_reference = prober.latencies
    _print_runs("reference", results.reference)


def run_pixelmill(args, plan: Plan, models: Path, work: Path, results: Results) -> None:
    from bench.procs import auth_headers, pixelmill_server

    if "pixelmill" in args.skip and "queue" in args.skip:
        return
    print("(3) pixelmill serve, SQLite job store, default batching", flush=True)
    with pixelmill_server(work / "pixelmill-sqlite", models) as server:
        headers = auth_headers(server, args.api_key)
        if "pixelmill" not in args.skip:
            _pixelmill_load(args, plan, server.url, headers, results)
        if "queue" not in args.skip:
            _queue(args, plan, server.url, headers, "SQLite", results)


def _pixelmill_load(args, plan: Plan, url: str, headers: dict, results: Results) -> None:
    sync, jobs = openai_call(url, args.size, args.steps, headers), job_call(url, args.size, args.steps, headers)
    closed_loop(1, 1, sync, first=0)  # warm-up: first call, then a full concurrent round
    closed_loop(CLIENTS, 1, sync, first=10)
    results.sync[1] = closed_loop(1, plan.single_requests, sync, first=1000)
    results.jobs[1] = closed_loop(1, plan.single_requests, jobs, first=2000)
    with HealthProber(url) as prober:
        results.sync[CLIENTS] = closed_loop(CLIENTS, plan.per_client, sync, first=3000)
        results.jobs[CLIENTS] = closed_loop(CLIENTS, plan.per_client, jobs, first=4000)
    results.health_pixelmill = prober.latencies
    _print_runs("pixelmill sync", results.sync)
    _print_runs("pixelmill jobs", results.jobs)


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


def _print_runs(label: str, runs: dict) -> None:
    for clients, run in sorted(runs.items()):
        print(f"  {label}, {clients} client(s): {run.images} images in {run.wall_s:.1f} s "
              f"= {run.throughput:.3f} img/s", flush=True)


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
        run_inprocess(args, plan, models, work, results)
        run_rss(args, models, results)
        run_reference(args, plan, models, work, results)
        run_pixelmill(args, plan, models, work, results)
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
