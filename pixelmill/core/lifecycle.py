"""Which status changes a job may make: the one table every store writer checks.

::

    queued  → running (claimed) | canceled (canceled while waiting)
    running → succeeded | failed | canceled | queued (retried, released or reaped)

Terminal states (succeeded, failed, canceled) have no way out. Staying in a status
(a heartbeat, a progress write, a cancellation request on a running job) is no
transition and needs no entry here.
"""

from __future__ import annotations

from collections.abc import Mapping

from pixelmill.core.types import JobStatus

TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.canceled}),
    JobStatus.running: frozenset(
        {JobStatus.succeeded, JobStatus.failed, JobStatus.canceled, JobStatus.queued}
    ),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.canceled: frozenset(),
}
"""Status → the statuses a job in it may move to."""


class IllegalTransition(ValueError):
    """A store writer asked for a status change :data:`TRANSITIONS` does not allow (a bug)."""

    def __init__(self, source: JobStatus, target: JobStatus):
        super().__init__(f"a job cannot go from {source.value} to {target.value}")
        self.source, self.target = source, target


def can_transition(source: JobStatus | str, target: JobStatus | str) -> bool:
    """Whether a job in ``source`` may move to ``target``."""
    return JobStatus(target) in TRANSITIONS[JobStatus(source)]


def check_transition(source: JobStatus | str, target: JobStatus | str) -> None:
    """Raise :class:`IllegalTransition` unless ``source → target`` is in the table."""
    if not can_transition(source, target):
        raise IllegalTransition(JobStatus(source), JobStatus(target))
