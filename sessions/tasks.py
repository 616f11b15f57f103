"""django-q2 entry points for rentals; thin: each re-reads the rental and calls one service."""

from __future__ import annotations

from sessions import services


def provision(rental_id) -> None:
    services.rental_provision(rental_id=rental_id)


def teardown(rental_id) -> None:
    # When this run's budget ends before the provider confirms, the minute sweep
    # (resume_stopping) starts another: destroys are retried without end.
    services.rental_teardown(rental_id=rental_id)


def resume_stopping() -> int:
    """Periodic safety net: re-enqueue teardown for rentals stuck in stopping."""
    return services.rentals_resume_stopping()
