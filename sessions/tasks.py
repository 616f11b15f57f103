"""django-q2 entry points for rentals; thin: each re-reads the rental and calls one service.

Provisioning and teardown first record that they started (sessions/stalled.py): work handed to
the queue that does not start in time is taken over by the safety loop. ``waits`` is for tests
that run tasks inline (tests/fakes.py); the queue never passes it."""

from __future__ import annotations

from sessions import provisioning, stalled
from sessions import teardown as teardowns
from sessions.waits import PRODUCTION, Waits


def provision(rental_id, *, waits: Waits = PRODUCTION) -> None:
    stalled.work_started(rental_id, "provision")
    provisioning.rental_provision(rental_id=rental_id, waits=waits)


def teardown(rental_id, *, waits: Waits = PRODUCTION) -> None:
    stalled.work_started(rental_id, "teardown")
    # When this run's budget ends before the provider confirms, the minute sweep
    # (resume_stopping) starts another: destroys are retried without end.
    teardowns.rental_teardown(rental_id=rental_id, waits=waits)


def resume_stopping() -> int:
    """Periodic safety net: re-enqueue teardown for rentals stuck in stopping."""
    return teardowns.rentals_resume_stopping()


def queue_probe(probe_id: int) -> None:
    """The tiny task of ``manage.py worker_health``: proves the queue still starts work."""
    stalled.probe_started(probe_id)


def health_checks() -> int:
    """Periodic: ask each new inference server's health check (sessions.provisioning)."""
    return provisioning.rentals_health_check()
