"""Safety rule 4: every deadline is enforced (reservation end, hard maximum, heartbeat timeout),
with the reason on the timeline, teardown enqueued and the enforcement lag measured; the warning
before a reservation ends is recorded once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sessions.lifecycle import Enforced, lifecycle_enforce
from sessions.models import (
    DEADLINE_AGENT_SILENT,
    DEADLINE_HARD_MAX,
    DEADLINE_RESERVATION,
    Alert,
    AlertKind,
    RentalEvent,
    Status,
)
from tests.safety.conftest import ADMIN_EMAIL, deadline_events
from tests.sessions.conftest import START, events, fresh, transitions

S = Status
TEARDOWN = "sessions.tasks.teardown"
RESERVATION = "Reservation ended"
HARD_MAX = "Hard maximum reached"
SILENT = "The node agent went silent (no heartbeat)"


def enforce(django_capture_on_commit_callbacks, now=None):
    with django_capture_on_commit_callbacks(execute=True):
        return lifecycle_enforce(now)


def assert_stopped(rental, fake, *, reason: str, deadline, lag: float):
    """stopping, the reason on the timeline, teardown enqueued, lag on a Deadline enforced event."""
    row = fresh(rental)
    assert row.status == S.STOPPING
    assert row.stop_requested_at == timezone.now()
    assert transitions(rental)[-1] == (rental.status, S.STOPPING)
    stop = events(rental, "transition")[-1]
    assert stop.reason == f"{reason} at {deadline:%H:%M:%S} UTC"
    assert row.status_detail == stop.reason
    assert fake.enqueued == [(TEARDOWN, rental.pk)]
    [enforced] = deadline_events(rental)
    which = {RESERVATION: DEADLINE_RESERVATION, HARD_MAX: DEADLINE_HARD_MAX, SILENT: DEADLINE_AGENT_SILENT}
    assert enforced.data == {
        "deadline_kind": which[reason],
        "lag_seconds": lag,
        "deadline": deadline.isoformat(),
    }


# --- each deadline, injected ----------------------------------------------------------------


def test_reservation_end_stops_the_rental(active_rental, fake, django_capture_on_commit_callbacks):
    deadline = START - timedelta(seconds=20)
    rental = active_rental(reservation_ends_at=deadline)

    done = enforce(django_capture_on_commit_callbacks)

    assert done == [Enforced(rental.pk, RESERVATION, 20.0, DEADLINE_RESERVATION)]
    assert_stopped(rental, fake, reason=RESERVATION, deadline=deadline, lag=20.0)
    assert not Alert.objects.exists()


def test_hard_max_stops_the_rental(active_rental, fake, django_capture_on_commit_callbacks):
    deadline = START - timedelta(seconds=3)
    rental = active_rental(hard_max_at=deadline, reservation_ends_at=START + timedelta(hours=1))

    done = enforce(django_capture_on_commit_callbacks)

    assert done == [Enforced(rental.pk, HARD_MAX, 3.0, DEADLINE_HARD_MAX)]
    assert_stopped(rental, fake, reason=HARD_MAX, deadline=deadline, lag=3.0)


def test_heartbeat_timeout_stops_and_alerts_once(
    active_rental, fake, mailoutbox, django_capture_on_commit_callbacks
):
    last = START - timedelta(seconds=301)
    rental = active_rental(last_heartbeat_at=last)

    done = enforce(django_capture_on_commit_callbacks)

    assert done == [Enforced(rental.pk, SILENT, 1.0, DEADLINE_AGENT_SILENT)]
    assert_stopped(rental, fake, reason=SILENT, deadline=last + timedelta(seconds=300), lag=1.0)
    [alert] = Alert.objects.all()
    assert alert.kind == AlertKind.AGENT_SILENT and alert.rental_id == rental.pk
    assert alert.resolved_at is None
    assert rental.label in alert.message and "11:54:59" in alert.message
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == [ADMIN_EMAIL]
    assert mailoutbox[0].subject.endswith("Agent gone silent")

    # The next passes change nothing and send nothing.
    fake.traveller.shift(timedelta(seconds=5))
    assert enforce(django_capture_on_commit_callbacks) == []
    fake.traveller.shift(timedelta(minutes=5))
    assert enforce(django_capture_on_commit_callbacks) == []
    assert Alert.objects.count() == 1 and len(mailoutbox) == 1
    assert len(deadline_events(rental)) == 1
    assert fake.enqueued == [(TEARDOWN, rental.pk)]


def test_heartbeat_timeout_counts_from_active_since_without_heartbeat(
    active_rental, fake, mailoutbox, django_capture_on_commit_callbacks
):
    since = START - timedelta(seconds=330)
    rental = active_rental(last_heartbeat_at=None, active_since=since)

    done = enforce(django_capture_on_commit_callbacks)

    assert done == [Enforced(rental.pk, SILENT, 30.0, DEADLINE_AGENT_SILENT)]
    assert_stopped(rental, fake, reason=SILENT, deadline=since + timedelta(seconds=300), lag=30.0)
    assert Alert.objects.get().kind == AlertKind.AGENT_SILENT
    assert len(mailoutbox) == 1


def test_a_pending_rental_past_its_reservation_is_stopped_too(
    make_rental, fake, django_capture_on_commit_callbacks
):
    deadline = START - timedelta(seconds=1)
    rental = make_rental(S.PENDING, reservation_ends_at=deadline)

    done = enforce(django_capture_on_commit_callbacks)

    assert done == [Enforced(rental.pk, RESERVATION, 1.0, DEADLINE_RESERVATION)]
    assert_stopped(rental, fake, reason=RESERVATION, deadline=deadline, lag=1.0)


def test_the_deadline_itself_counts_as_passed(active_rental, fake, django_capture_on_commit_callbacks):
    rental = active_rental(reservation_ends_at=START)

    assert enforce(django_capture_on_commit_callbacks) == [
        Enforced(rental.pk, RESERVATION, 0.0, DEADLINE_RESERVATION)
    ]
    assert fresh(rental).status == S.STOPPING


def test_lag_is_measured_against_the_pass_time(active_rental, fake, django_capture_on_commit_callbacks):
    deadline = START - timedelta(seconds=42, milliseconds=500)
    rental = active_rental(reservation_ends_at=deadline)

    [done] = enforce(django_capture_on_commit_callbacks)

    assert done.lag_seconds == pytest.approx(42.5)
    assert deadline_events(rental)[0].data["lag_seconds"] == 42.5


# --- what must be left alone --------------------------------------------------------------------


def test_a_rental_just_before_every_deadline_is_left_alone(
    active_rental, fake, mailoutbox, django_capture_on_commit_callbacks
):
    rental = active_rental(
        reservation_ends_at=START + timedelta(seconds=1),
        hard_max_at=START + timedelta(seconds=1),
        last_heartbeat_at=START - timedelta(seconds=299),
    )

    assert enforce(django_capture_on_commit_callbacks) == []

    assert fresh(rental).status == S.ACTIVE
    assert transitions(rental) == []
    assert deadline_events(rental) == []
    assert fake.enqueued == []
    assert not Alert.objects.exists() and mailoutbox == []


def test_no_heartbeat_timeout_before_the_rental_is_active(
    make_rental, fake, django_capture_on_commit_callbacks
):
    """Booting/verifying rentals have no agent yet: only active ones can go silent."""
    booting = make_rental(S.BOOTING, provider_instance_id="77", created_at=START - timedelta(hours=1))
    verifying = make_rental(
        S.VERIFYING, provider_instance_id="78", active_since=None, created_at=START - timedelta(hours=1)
    )

    assert enforce(django_capture_on_commit_callbacks) == []

    assert fresh(booting).status == S.BOOTING and fresh(verifying).status == S.VERIFYING
    assert fake.enqueued == [] and not Alert.objects.exists()


@pytest.mark.parametrize("status", [S.STOPPING, S.DESTROYED, S.FAILED])
def test_stopping_and_terminal_rentals_are_never_touched(
    make_rental, fake, mailoutbox, django_capture_on_commit_callbacks, status
):
    long_ago = START - timedelta(hours=3)
    rental = make_rental(
        status,
        provider_instance_id="99",
        active_since=long_ago,
        last_heartbeat_at=long_ago,
        reservation_ends_at=long_ago,
        hard_max_at=long_ago,
        reservation_warned_at=None,
        stop_requested_at=long_ago if status == S.STOPPING else None,
    )

    assert enforce(django_capture_on_commit_callbacks) == []

    row = fresh(rental)
    assert row.status == status and row.stop_requested_at == rental.stop_requested_at
    assert row.reservation_warned_at is None
    assert not RentalEvent.objects.filter(rental=rental).exists()
    assert fake.enqueued == [] and not Alert.objects.exists() and mailoutbox == []


# --- several deadlines passed: the earliest is the reason ---------------------------------------


@pytest.mark.parametrize(
    ("reservation", "hard_max", "heartbeat", "reason", "lag"),
    [
        # reservation 10 min ago, hard max 5 min ago, agent silent since 100 s ago
        (-600, -300, -400, RESERVATION, 600.0),
        # hard max 20 min ago (reservation extended past it is impossible, but enforce anyway)
        (-60, -1200, -30, HARD_MAX, 1200.0),
        # the agent went silent first (15 min ago), the reservation ended 1 min ago
        (-60, 3600, -1200, SILENT, 900.0),
    ],
    ids=["reservation", "hard-max", "heartbeat"],
)
def test_the_earliest_passed_deadline_is_the_reason(
    active_rental, fake, django_capture_on_commit_callbacks, reservation, hard_max, heartbeat, reason, lag
):
    rental = active_rental(
        reservation_ends_at=START + timedelta(seconds=reservation),
        hard_max_at=START + timedelta(seconds=hard_max),
        last_heartbeat_at=START + timedelta(seconds=heartbeat),
    )

    [done] = enforce(django_capture_on_commit_callbacks)

    assert (done.reason, done.lag_seconds) == (reason, lag)
    deadline = START - timedelta(seconds=lag)
    assert_stopped(rental, fake, reason=reason, deadline=deadline, lag=lag)
    silent_alerts = Alert.objects.filter(kind=AlertKind.AGENT_SILENT).count()
    assert silent_alerts == (1 if reason == SILENT else 0)


def test_many_rentals_in_one_pass(active_rental, make_rental, fake, django_capture_on_commit_callbacks):
    due = [active_rental(reservation_ends_at=START - timedelta(seconds=i + 1)) for i in range(3)]
    fine = active_rental()
    stopping = make_rental(S.STOPPING, reservation_ends_at=START - timedelta(hours=1))

    done = enforce(django_capture_on_commit_callbacks)

    assert sorted(str(d.rental_id) for d in done) == sorted(str(r.pk) for r in due)
    assert sorted(str(args[1]) for args in fake.enqueued) == sorted(str(r.pk) for r in due)
    assert fresh(fine).status == S.ACTIVE and fresh(stopping).status == S.STOPPING


# --- the warning before the reservation ends -----------------------------------------------------


def test_warning_once_when_the_reservation_ends_within_15_minutes(
    active_rental, fake, django_capture_on_commit_callbacks
):
    rental = active_rental(reservation_ends_at=START + timedelta(minutes=14, seconds=30))

    assert enforce(django_capture_on_commit_callbacks) == []

    [warning] = events(rental, "warning")
    assert warning.reason.startswith("The reservation ends in 14 min (12:14 UTC)")
    assert fresh(rental).reservation_warned_at == START

    fake.traveller.shift(timedelta(seconds=5))
    enforce(django_capture_on_commit_callbacks)
    fake.traveller.shift(timedelta(minutes=4))  # the agent still heartbeats within 5 min
    enforce(django_capture_on_commit_callbacks)

    assert len(events(rental, "warning")) == 1
    assert fresh(rental).status == S.ACTIVE
    assert fake.enqueued == []


def test_no_warning_while_the_reservation_ends_later_than_15_minutes(
    active_rental, fake, django_capture_on_commit_callbacks
):
    rental = active_rental(reservation_ends_at=START + timedelta(minutes=15, seconds=1))

    enforce(django_capture_on_commit_callbacks)
    assert events(rental, "warning") == []

    fake.traveller.shift(timedelta(seconds=2))  # now it ends within 15 min
    enforce(django_capture_on_commit_callbacks)
    assert len(events(rental, "warning")) == 1
