"""``python -m bench.a1111_concurrency``: 8 concurrent A1111 clients on pixelmill vs one-at-a-time serving.

AUTOMATIC1111 serves its API one request at a time (a queue lock around every
generation): N clients that call ``POST /sdapi/v1/txt2img`` at once wait in line. pixelmill
batches compatible jobs across callers. This benchmark measures both on **one** pixelmill
server (``pixelmill serve`` on the demo model that ``pixelmill demo-model`` writes, a tiny
random-weight SDXL), in the same run, with the same requests:

- **concurrent**: ``--clients`` closed-loop clients (each sends its next request when the
  previous one answered), ``--per-client`` requests each, all in flight together;
- **one at a time** (the reference): the same clients and requests, but a first-come
  first-served lock lets one request reach the server at a time, as A1111's queue lock
  does. A request's latency counts from the moment its client wanted to send it, so the
  wait in line is in it, as it is for an A1111 client.

Both cases take turns, round after round (the order alternates), and the ratio of their
throughputs is taken per round, between measurements seconds apart: on a shared 2-core
machine the speed of one image drifts within minutes. Prints throughput (images/s), p50 and
p95 latency, the median ratio with its min–max spread over rounds, and appends a section to
``bench/RESULTS.md`` (``--no-record``: print only). Loopback only; the server it starts is
stopped by its own process handle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no benchmark ever downloads weights

import httpx  # noqa: E402

from bench import machine as host  # noqa: E402
from bench.inprocess import prompt  # noqa: E402
from bench.load import REQUEST_TIMEOUT_S, BenchError, LoadRun  # noqa: E402
from bench.stats import median, percentile  # noqa: E402

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
CASES = ("concurrent", "one at a time")


def txt2img_body(i: int, size: int, steps: int) -> dict:
    """What an A1111 client (webuiapi's defaults, a distinct prompt and seed) sends for image ``i``."""
    return {"prompt": prompt(i), "negative_prompt": "", "seed": i, "steps": steps, "width": size, "height": size,
            "sampler_name": "Euler a", "scheduler": "Automatic", "cfg_scale": 7, "batch_size": 1, "n_iter": 1}


async def _round(base: str, headers: dict[str, str], *, clients: int, per_client: int, first: int,
                 size: int, steps: int, serial: bool) -> LoadRun:
    """``clients`` closed-loop clients; ``serial``: a FIFO lock lets one request in at a time."""
    lock = asyncio.Lock() if serial else None  # asyncio.Lock wakes its waiters in arrival order
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def one_client(c: int) -> None:
            for k in range(per_client):
                body = txt2img_body(first + c * per_client + k, size, steps)
                wanted = time.perf_counter()
                async with lock or nullcontext():
                    response = await client.post(f"{base}/sdapi/v1/txt2img", json=body, headers=headers)
                latencies.append(time.perf_counter() - wanted)
                if response.status_code != 200 or len(response.json().get("images") or []) != 1:
                    raise BenchError(f"txt2img: HTTP {response.status_code}: {response.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        return LoadRun(clients, clients * per_client, time.perf_counter() - started, latencies)


def measure(base: str, headers: dict[str, str], args: argparse.Namespace,
            deadline: float) -> dict[str, list[LoadRun]]:
    """A warm-up, then ``args.rounds`` rounds of both cases (alternating which goes first).

    After ``--min-rounds``, no round starts that would end past ``deadline`` (judged by the
    slowest round so far): on a busy shared machine the run stays within its time budget.
    """
    shape = dict(clients=args.clients, per_client=args.per_client, size=args.size, steps=args.steps)
    # The first requests pay for lazy setup (one alone, then a batch's shapes): not measured.
    asyncio.run(_round(base, headers, **{**shape, "clients": 1, "per_client": 1}, first=10**6, serial=True))
    asyncio.run(_round(base, headers, **{**shape, "per_client": 1}, first=10**6, serial=False))
    runs: dict[str, list[LoadRun]] = {case: [] for case in CASES}
    slowest = 0.0
    for r in range(args.rounds):
        if r >= args.min_rounds and time.monotonic() + slowest > deadline:
            print(f"  stopping after {r} rounds: another would pass the --max-seconds budget", flush=True)
            break
        round_started = time.monotonic()
        order = CASES if r % 2 == 0 else CASES[::-1]
        first = r * args.clients * args.per_client  # both cases of a round send the very same requests
        for case in order:
            runs[case].append(asyncio.run(_round(base, headers, **shape, first=first,
                                                 serial=case == "one at a time")))
        line = ", ".join(f"{case} {runs[case][-1].throughput:.2f}" for case in CASES)
        print(f"  round {r + 1}/{args.rounds}: {line} img/s", flush=True)
        slowest = max(slowest, time.monotonic() - round_started)
    return runs


def summary(runs: dict[str, list[LoadRun]]) -> tuple[list[tuple[str, str, str, str]], list[float]]:
    """Table rows and the per-round throughput ratios (concurrent / one at a time)."""
    rows = []
    for case in CASES:
        images, wall = sum(r.images for r in runs[case]), sum(r.wall_s for r in runs[case])
        latencies = [x for r in runs[case] for x in r.latencies]
        rows.append((case, f"{images / wall:.3f} img/s ({images} images in {wall:.1f} s)",
                     f"{1000 * percentile(latencies, 50):.0f} ms", f"{1000 * percentile(latencies, 95):.0f} ms"))
    ratios = [a.throughput / b.throughput for a, b in zip(runs["concurrent"], runs["one at a time"])]
    return rows, ratios


def uptime() -> str:
    """``uptime``'s line (load averages over 1, 5, 15 min), or /proc/loadavg if it is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average: {host.loadavg()}"


def versions() -> str:
    import diffusers
    import torch
    import uvicorn

    from pixelmill import __version__

    return (f"pixelmill {__version__}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
            f"httpx {httpx.__version__}, uvicorn {uvicorn.__version__}, Python {sys.version.split()[0]}")


def batching() -> str:
    """The server's batching defaults (the benchmark starts it without batching options)."""
    from pixelmill.settings import Settings

    fields = Settings.model_fields
    return (f"max_batch_size {fields['max_batch_size'].default}, "
            f"max_batch_wait_ms {fields['max_batch_wait_ms'].default:g}")


def report(args, command: str, runs, *, before: str, after: str, seconds: float) -> str:
    rows, ratios = summary(runs)
    spread = f"min {min(ratios):.2f}×, max {max(ratios):.2f}×" if ratios else "n/a"
    machine = host.machine()
    lines = [
        f"## {machine.date} — A1111 API: {args.clients} concurrent clients vs one at a time, "
        f"{args.size}×{args.size}, {args.steps} steps, {args.model_size} demo model",
        "",
        f"Command: `{command}`",
        "",
        *(f"- {line}" for line in machine.lines()[:1]),
        f"- {versions()}",
        f"- {machine.commit}",
        f"- `uptime` before: {before}",
        f"- `uptime` after: {after}",
        "- note: other agents' test suites shared this 2-core machine during the run (see the load "
        "averages); absolute numbers are theirs as much as pixelmill's, the same-round ratio less so",
        f"- note: run took {seconds:.0f} s; one `pixelmill serve` (default batching: {batching()}), "
        f"`POST /sdapi/v1/txt2img` from {args.clients} closed-loop httpx clients × {args.per_client} "
        f"requests per round, {len(runs['concurrent'])} rounds",
        "",
        "| case | throughput | p50 latency | p95 latency |",
        "|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        f"Concurrent / one at a time, throughput: **{median(ratios):.2f}×** (median of {len(ratios)} "
        f"same-round ratios; {spread}; per round: {', '.join(f'{x:.2f}' for x in ratios)}).",
        "",
        "\"One at a time\" is the reference: the same requests from the same clients, let through a "
        "first-come first-served lock one at a time (A1111's queue lock); its latency includes the wait "
        "in line.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.a1111_concurrency", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent A1111 clients")
    parser.add_argument("--per-client", type=int, default=1, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both cases (the ratio's spread)")
    parser.add_argument("--min-rounds", type=int, default=3, help="rounds run even past --max-seconds")
    parser.add_argument("--max-seconds", type=float, default=270,
                        help="time budget of the whole run; rounds after --min-rounds stop within it")
    parser.add_argument("--size", type=int, default=128, help="width and height of every image")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of every image")
    parser.add_argument("--model-size", choices=("tiny", "bench"), default="tiny",
                        help="demo model (`pixelmill demo-model --size`)")
    parser.add_argument("--api-key", default=None, help="key to send if the server enforces auth")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                        help="append the section to bench/RESULTS.md")
    parser.add_argument("--results", type=Path, default=RESULTS_MD, help="results file to append to")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.procs import auth_headers, pixelmill_server
    from pixelmill.engine.demo import write_demo_models

    command = ("python -m bench.a1111_concurrency " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    before, started = uptime(), time.monotonic()
    print(f"uptime before: {before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pixelmill-a1111-bench-") as tmp:
        models = Path(tmp) / "models"
        write_demo_models(models, size=args.model_size)
        with pixelmill_server(Path(tmp) / "server", models) as server:
            print(f"pixelmill serving the {args.model_size} demo model at {server.url} (pid {server.process.pid})",
                  flush=True)
            runs = measure(server.url, auth_headers(server, args.api_key), args, started + args.max_seconds)
    after = uptime()
    text = report(args, command, runs, before=before, after=after, seconds=time.monotonic() - started)
    print("\n" + text)
    if args.record:
        with open(args.results, "a", encoding="utf-8") as out:
            out.write("\n" + text)
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
