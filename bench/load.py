"""HTTP load: closed-loop clients for each API, and a /health prober on its own thread.

A closed loop (each client sends its next request when the previous one answered) is
how interactive users and most batch scripts behave; with N clients there are at most N
requests in flight, so the server's batching sees at most N compatible jobs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from bench.inprocess import prompt

TERMINAL_EVENTS = {"succeeded", "failed", "canceled"}
REQUEST_TIMEOUT_S = 600.0  # a generous bound; a stuck request fails the run instead of hanging it

Call = Callable[[httpx.AsyncClient, int], Awaitable[None]]


@dataclass
class LoadRun:
    """What N clients achieved: images, wall time, per-request latencies."""

    clients: int
    images: int
    wall_s: float
    latencies: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Images per second over the run's wall time."""
        return self.images / self.wall_s if self.wall_s else float("nan")


class BenchError(RuntimeError):
    """A server under test answered something other than success."""


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 300:
        raise BenchError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")


def reference_call(base: str, size: int, steps: int) -> Call:
    """One image from the tutorial-style server's ``POST /generate``."""
    async def call(client: httpx.AsyncClient, i: int) -> None:
        body = {"prompt": prompt(i), "seed": i, "steps": steps, "width": size, "height": size}
        response = await client.post(f"{base}/generate", json=body)
        _check(response, "reference /generate")
    return call


def openai_call(base: str, size: int, steps: int, headers: dict[str, str]) -> Call:
    """One image from pixelmill's OpenAI endpoint; ``steps``/``seed`` as ``extra_body`` sends them."""
    async def call(client: httpx.AsyncClient, i: int) -> None:
        body = {"model": "demo", "prompt": prompt(i), "n": 1, "size": f"{size}x{size}",
                "response_format": "b64_json", "steps": steps, "seed": i}
        response = await client.post(f"{base}/v1/images/generations", json=body, headers=headers)
        _check(response, "POST /v1/images/generations")
    return call


async def follow_events(client: httpx.AsyncClient, base: str, job_id: str, headers: dict[str, str],
                        on_event: Callable[[str], None] | None = None) -> dict:
    """Read the job's SSE stream until its terminal event; returns that event's job."""
    event = ""
    async with client.stream("GET", f"{base}/v1/jobs/{job_id}/events", headers=headers) as stream:
        _check(stream, "GET /v1/jobs/{id}/events")
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
                if on_event is not None:
                    on_event(event)
            elif line.startswith("data:") and event in TERMINAL_EVENTS:
                return {"event": event, **json.loads(line.removeprefix("data:"))}
    raise BenchError(f"job {job_id}: event stream ended without a terminal event")


async def submit_job(client: httpx.AsyncClient, base: str, body: dict, headers: dict[str, str]) -> dict:
    response = await client.post(f"{base}/v1/jobs", json=body, headers=headers)
    _check(response, "POST /v1/jobs")
    return response.json()


def job_call(base: str, size: int, steps: int, headers: dict[str, str]) -> Call:
    """One image through the async job API: submit, follow SSE to the end, download it."""
    async def call(client: httpx.AsyncClient, i: int) -> None:
        body = {"prompt": prompt(i), "seed": i, "steps": steps, "width": size, "height": size}
        job = await submit_job(client, base, body, headers)
        done = await follow_events(client, base, job["id"], headers)
        if done["event"] != "succeeded":
            raise BenchError(f"job {job['id']} ended {done['event']}: {done.get('error')}")
        image = await client.get(done["results"][0]["url"], headers=headers)
        _check(image, "GET result file")
    return call


async def _closed_loop(clients: int, per_client: int, call: Call, first: int) -> LoadRun:
    limits = httpx.Limits(max_connections=4 * clients + 4, max_keepalive_connections=4 * clients + 4)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        latencies: list[float] = []

        async def one_client(c: int) -> None:
            for k in range(per_client):
                started = time.perf_counter()
                await call(client, first + c * per_client + k)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        return LoadRun(clients, clients * per_client, time.perf_counter() - started, latencies)


def closed_loop(clients: int, per_client: int, call: Call, *, first: int) -> LoadRun:
    """``clients`` concurrent clients, ``per_client`` requests each; seeds/prompts from ``first``."""
    return asyncio.run(_closed_loop(clients, per_client, call, first))


class HealthProber:
    """GETs ``/health`` every ``interval_s`` on its own thread, recording each latency.

    Its own thread and connection, so the load clients' event loop cannot delay a
    probe: what it measures is the server. Use as a context manager around a load run.
    Five probes a second (a busy load balancer probes every few seconds) give hundreds of
    samples per run while keeping the prober's own CPU, on the same cores as the server
    under test, out of the throughput it runs next to.
    """

    def __init__(self, url: str, interval_s: float = 0.2):
        self.url = f"{url}/health"
        self.interval_s = interval_s
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-prober", daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - started
                if ok:
                    self.latencies.append(elapsed)
                else:
                    self.failures += 1
                self._stop.wait(self.interval_s)

    def __enter__(self) -> "HealthProber":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=REQUEST_TIMEOUT_S)
