"""The job status transition table and the store's status writers that check it."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pixelmill.core.lifecycle import TRANSITIONS, IllegalTransition, can_transition, check_transition
from pixelmill.core.types import JobStatus
from pixelmill.db import tables as t

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_every_status_has_an_entry_and_terminal_ones_have_no_way_out():
    assert set(TRANSITIONS) == set(JobStatus)
    for status, targets in TRANSITIONS.items():
        assert (not targets) == status.terminal, status


@pytest.mark.parametrize(("source", "target"), [
    (JobStatus.queued, JobStatus.running), (JobStatus.queued, JobStatus.canceled),
    (JobStatus.running, JobStatus.succeeded), (JobStatus.running, JobStatus.failed),
    (JobStatus.running, JobStatus.canceled), (JobStatus.running, JobStatus.queued),
])
def test_the_allowed_moves(source: JobStatus, target: JobStatus):
    assert can_transition(source, target) and can_transition(source.value, target.value)
    check_transition(source, target)


@pytest.mark.parametrize(("source", "target"), [
    (JobStatus.succeeded, JobStatus.running), (JobStatus.failed, JobStatus.queued),
    (JobStatus.canceled, JobStatus.succeeded), (JobStatus.queued, JobStatus.succeeded),
    (JobStatus.queued, JobStatus.failed), (JobStatus.running, JobStatus.running),
])
def test_an_illegal_transition_is_refused(source: JobStatus, target: JobStatus):
    assert not can_transition(source, target)
    with pytest.raises(IllegalTransition) as info:
        check_transition(source, target)
    assert (info.value.source, info.value.target) == (source, target)
    with pytest.raises(IllegalTransition):  # the store's writers take every status from the table
        t.moved(source, target)


def test_store_writers_set_statuses_through_the_table():
    assert t.claimed("w1", NOW, 10)["status"] == "running"
    assert t.succeeded(NOW, ["r"], [1])["status"] == "succeeded"
    assert t.requeued(1)["status"] == "queued"
    assert t.failed(NOW, "x", "y")["status"] == "failed"
    assert t.canceled(NOW)["status"] == t.canceled(NOW, JobStatus.queued)["status"] == "canceled"
    with pytest.raises(IllegalTransition):  # a finished job cannot be canceled again
        t.canceled(NOW, JobStatus.succeeded)
