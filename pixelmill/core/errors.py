"""The one exception hierarchy of pixelmill.

Every layer raises these; only ``pixelmill.api.errors`` knows how they map to HTTP.
Each error carries a stable machine ``code``, a human ``message`` and, where a
caller's input was at fault, the ``param`` that was wrong (internal field name;
dialects translate it to their own wire name).
"""

from __future__ import annotations


class PixelmillError(Exception):
    """Base class: ``code`` is stable and machine-readable, ``message`` is for people."""

    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.message} (param: {self.param})" if self.param else self.message


class InvalidRequest(PixelmillError):
    """The caller sent something that cannot be generated; nothing was queued."""

    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    """A body, upload or image exceeds a configured size limit."""

    code = "payload_too_large"


class NotFound(PixelmillError):
    """A named thing (model, file, LoRA, job) does not exist or has expired."""

    code = "not_found"


class Conflict(PixelmillError):
    """The request is valid but the thing it names is in the wrong state for it (e.g.
    cancelling a job that already succeeded); the message says which state."""

    code = "conflict"


class Unauthorized(PixelmillError):
    """Missing or wrong credentials."""

    code = "unauthorized"


class Forbidden(PixelmillError):
    """Valid credentials that do not allow this (e.g. an admin route with a generate key)."""

    code = "forbidden"


class Overloaded(PixelmillError):
    """The server is at capacity; the caller should retry after ``retry_after`` seconds."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, param: str | None = None):
        super().__init__(message, param=param)
        self.retry_after = retry_after


class ModelUnavailable(PixelmillError):
    """A model exists but could not be loaded (bad files, out of memory, offline)."""

    code = "model_unavailable"


class GenerationFailed(PixelmillError):
    """The engine failed while generating (a server fault, not the caller's)."""

    code = "generation_failed"


class GenerationCanceled(PixelmillError):
    """A generation was stopped between denoising steps because it was canceled."""

    code = "canceled"


class WaitTimeout(PixelmillError):
    """A synchronous call gave up waiting; the job itself goes on and can be followed."""

    code = "timeout"
