"""What pixelmill measures, as prometheus-client metric families.

Nothing here is registered in prometheus-client's global registry: each app builds its
own :class:`~prometheus_client.CollectorRegistry` (:func:`build_registry`), so tests can
build many apps in one process and two apps never share a count.

Three kinds of source:

* **recorded** in this process: :class:`JobMetrics` (queue wait, run time, batch size,
  finished jobs, images, GPU seconds, webhook deliveries; recorded by the jobs room's
  events) and :class:`HttpMetrics` (recorded by the API middleware);
* **process-wide** engine cache lookups (:data:`ENGINE_CACHES`): the engine's LoRA and
  ControlNet caches belong to the process, not to an app, so the engine counts into one
  :class:`CacheStats` and every registry reads it;
* **read at scrape time** from the job store (:class:`QueueCollector`): queue depth, the
  oldest queued job's age and jobs by status, true across every process sharing the store.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pixelmill.core.types import JobStatus

SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
"""Queue wait and run time: from an instant demo job to a half-hour queue."""
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
"""Jobs per pipeline call (``max_batch_size`` is at most 64)."""
DEFAULT_MODEL_LABEL = "default"
"""The ``model`` label of jobs that name no model (the server's default serves them)."""


class JobMetrics:
    """Counts and timings of the jobs this process's workers ran (see module docstring)."""

    def __init__(self) -> None:
        # registry=None: registered per app by build_registry, never globally.
        self.queue_wait = Histogram(
            "pixelmill_job_queue_wait_seconds", "Time from submission to the start of a job's attempt.",
            buckets=SECONDS_BUCKETS, registry=None)
        self.run_time = Histogram(
            "pixelmill_job_run_seconds",
            "Time from the start of a job's last attempt to its end, by final status.",
            ["status"], buckets=SECONDS_BUCKETS, registry=None)
        self.batch_size = Histogram(
            "pixelmill_batch_size", "Jobs per batch (one pipeline call).", buckets=BATCH_BUCKETS,
            registry=None)
        self.finished = Counter(
            "pixelmill_jobs_finished", "Jobs that ended here (succeeded, failed, or canceled while running).",
            ["status"], registry=None)
        self.images = Counter("pixelmill_images_generated", "Images of succeeded jobs.", registry=None)
        self.gpu_seconds = Counter(
            "pixelmill_gpu_seconds", "Accelerator seconds of succeeded jobs (the cost ledger's figure).",
            registry=None)
        self.webhooks = Counter(
            "pixelmill_webhook_deliveries", "Job webhook deliveries (all attempts of one event) by outcome.",
            ["event", "outcome"], registry=None)

    def collectors(self) -> tuple[Collector, ...]:
        return (self.queue_wait, self.run_time, self.batch_size, self.finished, self.images, self.gpu_seconds,
                self.webhooks)

    def batch_started(self, queue_waits_s: Iterable[float]) -> None:
        """A batch began: one wait (seconds since submission) per job in it."""
        waits = list(queue_waits_s)
        self.batch_size.observe(len(waits))
        for wait in waits:
            self.queue_wait.observe(max(0.0, wait))

    def job_finished(self, status: str, run_s: float | None, images: int, gpu_seconds: float | None) -> None:
        """A job reached ``status`` (terminal); ``run_s`` None when it never started."""
        self.finished.labels(status).inc()
        if run_s is not None:
            self.run_time.labels(status).observe(max(0.0, run_s))
        if status == "succeeded":
            self.images.inc(images)
            self.gpu_seconds.inc(gpu_seconds or 0.0)

    def webhook_delivered(self, event: str, outcome: str) -> None:
        """One delivery's outcome: ``delivered``, ``failed`` (the receiver or the network) or
        ``refused`` (the URL guard sent nothing)."""
        self.webhooks.labels(event, outcome).inc()


class HttpMetrics:
    """HTTP requests by route template (not the raw path: bounded labels) and status."""

    UNMATCHED = "<unmatched>"
    """The route label of requests no route matched (404s, refusals before routing)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "pixelmill_http_requests", "HTTP requests by dialect, route template, method and status.",
            ["dialect", "route", "method", "status"], registry=None)
        self.duration = Histogram(
            "pixelmill_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            ["dialect", "route"], buckets=SECONDS_BUCKETS, registry=None)

    def collectors(self) -> tuple[Collector, ...]:
        return (self.requests, self.duration)

    def observe(self, dialect: str, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(dialect, route, method, str(status)).inc()
        self.duration.labels(dialect, route).observe(seconds)


class CacheStats:
    """Hits and misses per engine cache (``lora``, ``controlnet``); thread-safe (the engine
    has its own thread)."""

    def __init__(self) -> None:
        self._counts: Tally[tuple[str, str]] = Tally()
        self._lock = threading.Lock()

    def record(self, cache: str, *, hit: bool) -> None:
        with self._lock:
            self._counts[(cache, "hit" if hit else "miss")] += 1

    def counts(self) -> dict[tuple[str, str], int]:
        """``{(cache, "hit"|"miss"): count}`` so far."""
        with self._lock:
            return dict(self._counts)


ENGINE_CACHES = CacheStats()
"""The process's engine cache lookups (one engine per worker; all of them count here)."""


class CacheCollector(Collector):
    """Exposes a :class:`CacheStats` as ``pixelmill_engine_cache_lookups_total``."""

    def __init__(self, stats: CacheStats = ENGINE_CACHES) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "pixelmill_engine_cache_lookups",
            "Engine cache lookups (LoRA adapters, ControlNet models) by result; this process's engines only.",
            labels=["cache", "result"])
        counts = self.stats.counts()  # one consistent reading per scrape
        for cache in ("lora", "controlnet"):  # always present, so a rate() has a series from the start
            for result in ("hit", "miss"):
                family.add_metric([cache, result], counts.get((cache, result), 0))
        yield family


@dataclass(frozen=True)
class QueueSnapshot:
    """The job store as of one scrape."""

    jobs_by_status: dict[str, int] = field(default_factory=dict)
    queued_by_model: dict[str, int] = field(default_factory=dict)
    oldest_queued_age_s: dict[str, float] = field(default_factory=dict)


class QueueCollector(Collector):
    """Queue depth, oldest queued age (per model) and jobs by status, from ``snapshot()``
    called at each scrape (the store is the truth across processes)."""

    STATUSES = tuple(status.value for status in JobStatus)  # every status has a series, 0 or not

    def __init__(self, snapshot: Callable[[], QueueSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        now = self.snapshot()
        depth = GaugeMetricFamily("pixelmill_queue_depth", "Queued jobs per model (read from the job store).",
                                  labels=["model"])
        oldest = GaugeMetricFamily("pixelmill_queue_oldest_age_seconds",
                                   "Age of the oldest queued job per model (read from the job store).",
                                   labels=["model"])
        for model, count in sorted(now.queued_by_model.items()):
            depth.add_metric([model], count)
            oldest.add_metric([model], now.oldest_queued_age_s.get(model, 0.0))
        jobs = GaugeMetricFamily("pixelmill_jobs", "Jobs in the job store by status (all processes).",
                                 labels=["status"])
        for status in (*self.STATUSES, *sorted(set(now.jobs_by_status) - set(self.STATUSES))):
            jobs.add_metric([status], now.jobs_by_status.get(status, 0))
        yield from (depth, oldest, jobs)


def build_registry(*collectors: Collector) -> CollectorRegistry:
    """A fresh registry holding ``collectors`` (one per app; never the global default)."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in collectors:
        registry.register(collector)
    return registry
