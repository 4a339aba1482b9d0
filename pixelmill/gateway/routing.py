"""Routing decisions: which backend serves a request. Pure: facts in, a decision out.

* ``local``: this fleet's workers.
* ``upstream``: the route's backend.
* ``local-then-upstream``: local, unless no local worker is alive or the local queue's
  *expected wait* exceeds the route's ``overflow_wait_s``; then the backend (overflow).
  The expected wait is the local work ahead (queued + running jobs) times the mean run
  time of the latest local jobs (:data:`DEFAULT_JOB_S` before any finished), over the
  number of local workers.
* ``shadow``: local; a ``sample`` fraction of the jobs also runs on the backend, to
  compare cost and time. Sampling hashes the job id, so it is the same in every process
  and a test can count it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from pixelmill.gateway.config import LOCAL, Route

DEFAULT_JOB_S = 10.0
"""Assumed run time of a local job before any has finished (for the expected wait)."""


@dataclass(frozen=True)
class LocalFleet:
    """What the overflow rule knows about the local side when a request arrives."""

    queued: int
    running: int
    workers: int
    """Local workers serving this queue (embedded ones; 1 when only remote workers are known)."""
    alive: bool
    mean_job_s: float | None = None


@dataclass(frozen=True)
class Decision:
    """Where a job goes (``route``: ``"local"`` or a backend name), and why."""

    route: str
    reason: str
    shadow_backend: str | None = None
    shadow_sample: float = 0.0


def expected_wait_s(fleet: LocalFleet) -> float:
    """Seconds a new local job would wait before it starts (see the module docstring)."""
    per_job = fleet.mean_job_s if fleet.mean_job_s is not None else DEFAULT_JOB_S
    return (fleet.queued + fleet.running) * per_job / max(fleet.workers, 1)


def decide(route: Route, fleet: LocalFleet | None) -> Decision:
    """The decision for a request on ``route``; ``fleet`` is needed by local-then-upstream only."""
    if route.policy == LOCAL:
        return Decision(LOCAL, "routed local")
    if route.policy == "upstream":
        return Decision(route.backend or LOCAL, f"routed to {route.backend}")
    if route.policy == "shadow":
        return Decision(LOCAL, "shadowed", shadow_backend=route.backend, shadow_sample=route.sample)
    if fleet is None:
        raise ValueError("local-then-upstream needs the local fleet's state")
    if not fleet.alive:
        return Decision(route.backend or LOCAL, "overflow: no local worker is alive")
    wait = expected_wait_s(fleet)
    if wait > route.overflow_wait_s:
        return Decision(route.backend or LOCAL,
                        f"overflow: expected local wait {wait:.1f} s > {route.overflow_wait_s:g} s")
    return Decision(LOCAL, f"local: expected wait {wait:.1f} s")


def sampled(job_id: str, fraction: float) -> bool:
    """Whether job ``job_id`` is in the ``fraction`` sample (stable: a hash of the id)."""
    if fraction <= 0:
        return False
    if fraction >= 1:
        return True
    value = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") / 2**64
    return value < fraction


def remote_fleet_alive(
    now: datetime, oldest_queued_at: datetime | None, last_heartbeat: datetime | None, silence_s: float,
) -> bool:
    """For a host without embedded workers: remote workers count as alive unless a local job
    has waited a whole ``silence_s`` while no local lease was renewed in that time."""
    if oldest_queued_at is None or (now - oldest_queued_at).total_seconds() < silence_s:
        return True
    return last_heartbeat is not None and (now - last_heartbeat).total_seconds() < silence_s
