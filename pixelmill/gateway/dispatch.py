"""The gateway's side of submitting: which models it serves and where each request goes.

:class:`Dispatcher` is what :class:`pixelmill.jobs.service.JobService` calls (its
``Router`` protocol): it reads the local queue from the store and the embedded workers'
health, and leaves the decision itself to :mod:`pixelmill.gateway.routing`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Protocol

from pixelmill.core.errors import InvalidRequest, ModelUnavailable
from pixelmill.core.types import GenerationRequest
from pixelmill.gateway.clients import MODES
from pixelmill.gateway.config import LOCAL, Backend, GatewayConfig
from pixelmill.gateway.routing import Decision, LocalFleet, decide, remote_fleet_alive, sampled
from pixelmill.jobs.store import JobStore

log = logging.getLogger(__name__)


class _Servable(Protocol):
    @property
    def unavailable(self) -> ModelUnavailable | None: ...


def unsupported(request: GenerationRequest, backend: Backend) -> tuple[str, str] | None:
    """``(param, what)`` when ``backend`` cannot be sent ``request``: LoRAs and ControlNets
    never go upstream (a hosted model has neither of this server's files); image inputs only
    to a kind that takes them (:data:`pixelmill.gateway.clients.MODES`)."""
    if request.loras:
        return "loras[0].name", "LoRAs"
    if request.controlnets:
        return "controlnets[0].name", "ControlNets"
    if request.mode not in MODES[backend.kind]:
        return "init_image", f"{request.mode.value} (an {backend.kind}-kind upstream takes " + \
            ", ".join(sorted(mode.value for mode in MODES[backend.kind])) + ")"
    return None


class Dispatcher:
    """Routes requests by model name (see :mod:`pixelmill.gateway.routing`)."""

    def __init__(self, config: GatewayConfig, store: JobStore, workers: Sequence[_Servable], *, silence_s: float):
        self.config = config
        self.store = store
        self.workers = workers  # this process's embedded local workers
        self.silence_s = silence_s
        self._upstream_models = config.upstream_models()

    def serves(self, model: str | None) -> bool:
        """Whether an upstream backend serves ``model`` (the model catalog accepts it)."""
        return model is not None and model in self._upstream_models

    def _fleet(self) -> LocalFleet:
        load = self.store.route_load(LOCAL)
        if self.workers:
            alive = any(worker.unavailable is None for worker in self.workers)
        else:
            alive = remote_fleet_alive(datetime.now(timezone.utc), load.oldest_queued_at, load.last_heartbeat,
                                       self.silence_s)
        return LocalFleet(queued=load.queued, running=load.running, workers=max(len(self.workers), 1),
                          alive=alive, mean_job_s=load.mean_job_s)

    def decide(self, request: GenerationRequest) -> Decision:
        """Where ``request`` (resolved) goes. Blocking: may read the local queue."""
        route = self.config.route(request.model)
        fleet = self._fleet() if route.policy == "local-then-upstream" else None
        decision = decide(route, fleet)
        upstream = decision.shadow_backend or (decision.route if decision.route != LOCAL else None)
        problem = unsupported(request, self.config.backends[upstream]) if upstream else None
        if problem is not None:
            param, what = problem
            if route.policy == "upstream":
                raise InvalidRequest(f"model {request.model!r} is served by the upstream backend "
                                     f"{upstream!r}, to which this gateway cannot send {what}", param=param)
            return Decision(LOCAL, f"local: the upstream backend {upstream!r} cannot take {what}")
        if decision.route != LOCAL:
            log.info("model %s: %s", request.model, decision.reason)
        return decision

    def shadow(self, job_id: str, decision: Decision) -> str | None:
        """The backend to shadow local job ``job_id`` on, when it is in the sample."""
        if decision.shadow_backend and sampled(job_id, decision.shadow_sample):
            return decision.shadow_backend
        return None
