"""The one entry point every dialect calls to get images made.

``GenerationService.generate`` validates a request against the server's limits, checks
that its model and scheduler exist, fixes its seed, and only then hands it to the
engine. A request that fails any check raises before anything runs.

The durable job store (issue #3) slots in here: ``generate`` becomes "commit a job
row, then wait for it", with the same signature, so the dialects do not change.
"""

from __future__ import annotations

from collections.abc import Callable

from pixelmill.domain import GenerationRequest, JobResult, Progress, resolve_seed
from pixelmill.engine.runner import CancelToken, EngineRunner
from pixelmill.settings import Settings
from pixelmill.validation import validate_request


class GenerationService:
    """Validate, then run on the engine; the seam where durable jobs attach."""

    def __init__(self, settings: Settings, runner: EngineRunner):
        self.settings = settings
        self.runner = runner

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        """The request as it will run: checked against limits, model and seed resolved."""
        validate_request(request, self.settings)
        self.runner.engine.check(request)
        return request.model_copy(update={"seed": resolve_seed(request.seed)})

    async def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> JobResult:
        """Generate the images ``request`` asks for and wait for them."""
        prepared = self.prepare(request)
        return await self.runner.generate(prepared, on_progress=on_progress, cancel=cancel)
