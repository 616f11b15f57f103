"""rental_transition: the one status writer, a compare-and-swap plus one RentalEvent."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from sessions.models import LIVE_STATUSES, TERMINAL_STATUSES, TRANSITIONS, Rental, RentalEvent, Status
from sessions.services import IllegalTransition, rental_transition

from .conftest import fresh

pytestmark = pytest.mark.django_db

S = Status
ALLOWED = sorted((old, new) for old, targets in TRANSITIONS.items() for new in targets)
DISALLOWED = sorted((old, new) for old in S for new in S if new not in TRANSITIONS[old])


def test_it_has_the_documented_status_machine():
    assert sorted(
        [
            (S.PENDING, S.PROVISIONING), (S.PENDING, S.STOPPING), (S.PENDING, S.FAILED),
            (S.PROVISIONING, S.BOOTING), (S.PROVISIONING, S.STOPPING), (S.PROVISIONING, S.FAILED),
            (S.BOOTING, S.VERIFYING), (S.BOOTING, S.STOPPING),
            (S.VERIFYING, S.ACTIVE), (S.VERIFYING, S.STOPPING),
            (S.ACTIVE, S.STOPPING),
            (S.STOPPING, S.DESTROYED),
            # Failover (sessions/failover.py): back to pending on the next offer.
            (S.PROVISIONING, S.PENDING), (S.STOPPING, S.PENDING),
        ]
    ) == ALLOWED  # fmt: skip
    # Any live status may go to stopping (stopping itself moves on to destroyed, or by a
    # failover to pending).
    assert all(S.STOPPING in TRANSITIONS[s] for s in LIVE_STATUSES if s != S.STOPPING)
    assert {S.DESTROYED, S.FAILED} == TERMINAL_STATUSES
    assert all(not TRANSITIONS[s] for s in TERMINAL_STATUSES)


@pytest.mark.parametrize(("old", "new"), ALLOWED)
def test_it_writes_every_allowed_transition_with_exactly_one_event(make_rental, staff, old, new):
    rental = make_rental(status=old)
    stamp = timezone.now() + timedelta(minutes=3)

    won = rental_transition(
        rental, new, reason=f"because {new}", actor=staff, data={"n": 1}, stop_requested_at=stamp
    )

    assert won is True
    row = fresh(rental)
    assert row.status == new and row.status_detail == f"because {new}"
    assert row.stop_requested_at == stamp  # extra fields are written in the same update
    assert (rental.status, rental.status_detail, rental.stop_requested_at) == (new, f"because {new}", stamp)
    [event] = RentalEvent.objects.filter(rental=rental)
    assert (event.kind, event.from_status, event.to_status) == ("transition", old, new)
    assert (event.reason, event.actor, event.data) == (f"because {new}", staff, {"n": 1})


def test_it_records_the_system_as_a_null_actor_and_empty_data(make_rental):
    rental = make_rental(status=S.ACTIVE)
    assert rental_transition(rental, S.STOPPING) is True
    [event] = RentalEvent.objects.filter(rental=rental)
    assert (event.actor, event.data, event.reason) == (None, {}, "")


@pytest.mark.parametrize(("old", "new"), DISALLOWED)
def test_it_refuses_every_disallowed_transition_and_writes_nothing(make_rental, old, new):
    rental = make_rental(status=old, status_detail="as it was")

    with pytest.raises(IllegalTransition, match=f"{old} -> {new}"):
        rental_transition(rental, new, reason="nope", ended_at=timezone.now())

    row = fresh(rental)
    assert (row.status, row.status_detail, row.ended_at) == (old, "as it was", None)
    assert rental.status == old
    assert not RentalEvent.objects.filter(rental=rental).exists()


@pytest.mark.parametrize("terminal", [S.DESTROYED, S.FAILED])
def test_it_never_leaves_a_terminal_status(make_rental, terminal):
    rental = make_rental(status=terminal)
    for new in S:
        with pytest.raises(IllegalTransition):
            rental_transition(rental, new)
    assert fresh(rental).status == terminal
    assert RentalEvent.objects.count() == 0


def test_a_stale_copy_loses_the_compare_and_swap(make_rental):
    rental = make_rental(status=S.ACTIVE)
    first, stale = Rental.objects.get(pk=rental.pk), Rental.objects.get(pk=rental.pk)

    assert rental_transition(first, S.STOPPING, reason="done") is True
    assert rental_transition(stale, S.STOPPING, reason="hard max") is False

    assert stale.status == S.ACTIVE and stale.status_detail == ""  # the loser's copy is untouched
    row = fresh(rental)
    assert (row.status, row.status_detail) == (S.STOPPING, "done")
    assert list(RentalEvent.objects.values_list("from_status", "to_status", "reason")) == [
        (S.ACTIVE, S.STOPPING, "done")
    ]


def test_a_stale_copy_cannot_overwrite_a_later_status(make_rental):
    """A worker that read ``pending`` must not drag a rental that was stopped meanwhile back into
    provisioning: the swap compares with the status it read."""
    rental = make_rental(status=S.PENDING)
    worker = Rental.objects.get(pk=rental.pk)
    assert rental_transition(rental, S.STOPPING, reason="user pressed done") is True

    assert rental_transition(worker, S.PROVISIONING, reason="creating") is False
    assert rental_transition(worker, S.FAILED, reason="create failed") is False

    assert fresh(rental).status == S.STOPPING
    assert RentalEvent.objects.filter(rental=rental).count() == 1


def test_a_stale_copy_still_gets_illegal_transition_for_moves_its_status_forbids(make_rental):
    rental = make_rental(status=S.ACTIVE)
    stale = Rental.objects.get(pk=rental.pk)
    rental_transition(rental, S.STOPPING)
    rental_transition(rental, S.DESTROYED)
    with pytest.raises(IllegalTransition):
        rental_transition(stale, S.DESTROYED)  # active -> destroyed is never allowed
    assert fresh(rental).status == S.DESTROYED
    assert RentalEvent.objects.filter(rental=rental).count() == 2


def test_it_does_not_touch_other_rentals(make_rental):
    a, b = make_rental(status=S.ACTIVE), make_rental(status=S.ACTIVE)
    rental_transition(a, S.STOPPING)
    assert fresh(b).status == S.ACTIVE
    assert not RentalEvent.objects.filter(rental=b).exists()


@pytest.mark.django_db(transaction=True)
def test_two_threads_racing_for_the_same_move_have_exactly_one_winner(make_rental):
    rental = make_rental(status=S.ACTIVE)
    copies = [Rental.objects.get(pk=rental.pk) for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[object] = []

    def run(copy):
        try:
            barrier.wait(timeout=5)
            for _ in range(10_000):
                try:
                    results.append(rental_transition(copy, S.STOPPING, reason="race"))
                    break
                except OperationalError as exc:
                    # The in-memory shared-cache test database answers a concurrent writer with
                    # "table is locked" at once (no busy timeout); the swap rolled back: retry.
                    if "locked" not in str(exc):
                        raise
        except Exception as exc:  # recorded, asserted below
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)

    assert sorted(results, key=str) == [False, True]
    assert fresh(rental).status == S.STOPPING
    assert RentalEvent.objects.filter(rental=rental).count() == 1
