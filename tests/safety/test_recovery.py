"""Safety rule 6 (start-up recovery) and the alert for destroys that stay unconfirmed (rule 3).

Recovery reconciles, then re-enqueues provisioning for rentals left half-way and teardown for
stopping ones, except those whose lease a live worker is still renewing. A worker killed between
sending the create and storing the instance id must end with exactly one instance."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sessions import provisioning, services
from sessions.models import Alert, AlertKind, Status
from sessions.provisioning import rental_provision
from sessions.reconcile import destroys_stuck_alert, recover_on_start
from sessions.teardown import rental_teardown, rentals_resume_stopping
from tests.safety.conftest import ADMIN_EMAIL
from tests.sessions.conftest import START, fresh, transitions

S = Status
PROVISION = "sessions.tasks.provision"
TEARDOWN = "sessions.tasks.teardown"


class Killed(BaseException):
    """The worker process dies (not an Exception: nothing in the code catches it)."""


def run_enqueued(fake, capture):
    """Run what was enqueued so far (and what those tasks enqueue), like a worker would."""
    from tests.fakes import task_run

    done = 0
    while done < len(fake.enqueued):
        func, *args = fake.enqueued[done]
        done += 1
        with capture(execute=True):
            task_run(func, *args)


# --- resuming what a dead worker left ------------------------------------------------------------


def test_recovery_resumes_in_flight_provisioning_and_teardowns(
    fake, make_rental, active_rental, django_capture_on_commit_callbacks
):
    in_flight = {
        S.PENDING: make_rental(S.PENDING),
        S.PROVISIONING: make_rental(S.PROVISIONING),
        S.BOOTING: make_rental(S.BOOTING),
        S.VERIFYING: make_rental(S.VERIFYING),
    }
    for status in (S.BOOTING, S.VERIFYING):  # these have an instance the listing shows
        rental = in_flight[status]
        inst = fake.add_instance(rental.label, state="running")
        rental.provider_instance_id = inst.instance_id
        rental.save(update_fields=["provider_instance_id"])
    held = START + timedelta(seconds=90)  # a live worker is renewing this lease
    stopping_held = make_rental(
        S.STOPPING, stop_requested_at=START - timedelta(minutes=1), teardown_claimed_until=held
    )
    stopping_expired = make_rental(
        S.STOPPING,
        stop_requested_at=START - timedelta(minutes=1),
        teardown_claimed_until=START - timedelta(seconds=1),
    )
    stopping_free = make_rental(S.STOPPING, stop_requested_at=START - timedelta(minutes=2))
    provisioning_held = make_rental(S.PROVISIONING, provision_claimed_until=held)
    untouched = [active_rental(), make_rental(S.DESTROYED), make_rental(S.FAILED)]

    with django_capture_on_commit_callbacks(execute=True):
        summary = recover_on_start()

    assert summary["provisioning_resumed"] == 4
    assert summary["teardowns_resumed"] == 2
    assert [r.provider for r in summary["reconciled"]] == ["fakecloud"]
    assert summary["reconciled"][0].aborted == ""
    assert sorted((f, str(a)) for f, a in fake.enqueued) == sorted(
        [(PROVISION, str(r.pk)) for r in in_flight.values()]
        + [(TEARDOWN, str(stopping_expired.pk)), (TEARDOWN, str(stopping_free.pk))]
    )
    # A restart of the safety loop alone never takes work from a worker that is still on it.
    assert fresh(stopping_held).teardown_claimed_until == held
    assert fresh(provisioning_held).provision_claimed_until == held
    assert all(str(r.pk) not in {str(a) for _, a in fake.enqueued} for r in untouched)
    assert [fresh(r).status for r in untouched] == [S.ACTIVE, S.DESTROYED, S.FAILED]


def test_a_dead_workers_teardown_lease_expires_and_the_teardown_then_finishes(
    fake, active_rental, settings, django_capture_on_commit_callbacks
):
    rental = active_rental()
    services.rental_stop(rental=rental, reason="Done")
    fake.enqueued.clear()
    # The worker that claimed the teardown died holding the lease.
    until = START + timedelta(seconds=settings.SHOPPER_LEASE_SECONDS)
    type(rental).objects.filter(pk=rental.pk).update(teardown_claimed_until=until)
    assert rental_teardown(rental_id=rental.pk, waits=fake.waits) is False  # the lease blocks everyone else
    with django_capture_on_commit_callbacks(execute=True):
        recover_on_start()
    assert fake.enqueued == []  # nothing proves yet that its worker is dead

    fake.sleep(settings.SHOPPER_LEASE_SECONDS + 1)  # no renewal: the lease has expired
    with django_capture_on_commit_callbacks(execute=True):
        assert rentals_resume_stopping() == 1
    assert fake.enqueued == [(TEARDOWN, rental.pk)]
    run_enqueued(fake, django_capture_on_commit_callbacks)
    assert fresh(rental).status == S.DESTROYED
    assert fresh(rental).teardown_claimed_until is None
    assert fake.instances == {}


def test_recovery_with_tasks_running_finishes_everything(
    fake, rent, active_rental, django_capture_on_commit_callbacks
):
    pending = rent().rental
    fake.enqueued.clear()  # the worker died before picking the provision task up
    stopping = active_rental()
    services.rental_stop(rental=stopping, reason="Done")
    fake.enqueued.clear()

    with django_capture_on_commit_callbacks(execute=True):
        recover_on_start()
    run_enqueued(fake, django_capture_on_commit_callbacks)

    assert fresh(pending).status == S.ACTIVE
    assert fresh(stopping).status == S.DESTROYED
    assert fake.count("create") == 1


# --- killed between "create sent" and "instance id stored" ---------------------------------------


@pytest.fixture
def killed_after_create(fake, rent, monkeypatch):
    """Provisioning sent the create; the worker died before the instance id reached the row."""
    rental = rent().rental
    fake.enqueued.clear()
    real_store = provisioning._instance_id_store

    def die(rental, instance_id):
        raise Killed

    monkeypatch.setattr(provisioning, "_instance_id_store", die)
    with pytest.raises(Killed):
        rental_provision(rental_id=rental.pk, waits=fake.waits)
    monkeypatch.setattr(provisioning, "_instance_id_store", real_store)

    row = fresh(rental)
    assert row.status == S.PROVISIONING and row.provider_instance_id == ""
    [inst] = fake.instances.values()
    assert inst.label == rental.label and fake.count("create") == 1
    return rental, inst


@pytest.mark.parametrize("lagging_lists", [0, 1, 2, 4])
def test_recovery_after_a_kill_between_create_and_storing_the_id_makes_one_instance(
    fake, killed_after_create, django_capture_on_commit_callbacks, lagging_lists
):
    rental, inst = killed_after_create
    inst.hidden_lists = lagging_lists  # the provider's listing lags behind the create
    fake.traveller.shift(timedelta(seconds=5))  # the worker restarts a moment later

    with django_capture_on_commit_callbacks(execute=True):
        summary = recover_on_start()

    assert summary["provisioning_resumed"] == 1
    assert fake.enqueued == [(PROVISION, rental.pk)]
    run_enqueued(fake, django_capture_on_commit_callbacks)

    row = fresh(rental)
    assert row.status == S.ACTIVE, row.status_detail
    assert row.provider_instance_id == inst.instance_id
    assert fake.count("create") == 1, "a second instance was created for the same label"
    assert list(fake.instances) == [inst.instance_id]
    assert transitions(rental)[-1] == (S.VERIFYING, S.ACTIVE)
    assert not Alert.objects.filter(kind=AlertKind.ORPHAN).exists()


def test_recovery_after_the_kill_when_the_rental_was_stopped_meanwhile(
    fake, killed_after_create, django_capture_on_commit_callbacks
):
    """Stopped while the worker was dead: the teardown finds the instance by its label."""
    rental, inst = killed_after_create
    services.rental_stop(rental=fresh(rental), reason="Done")
    fake.enqueued.clear()

    with django_capture_on_commit_callbacks(execute=True):
        recover_on_start()
    run_enqueued(fake, django_capture_on_commit_callbacks)

    assert fresh(rental).status == S.DESTROYED
    assert fake.args("destroy") == [inst.instance_id] and fake.instances == {}
    assert fake.count("create") == 1


# --- destroys that stay unconfirmed ----------------------------------------------------------------


def test_a_destroy_stuck_for_more_than_15_minutes_alerts_once(fake, make_rental, mailoutbox):
    stuck = make_rental(
        S.STOPPING, provider_instance_id="777", stop_requested_at=START - timedelta(minutes=15, seconds=1)
    )

    assert destroys_stuck_alert() == 1

    [alert] = Alert.objects.all()
    assert (alert.kind, alert.rental_id) == (AlertKind.DESTROY_STUCK, stuck.pk)
    assert stuck.label in alert.message and "777" in alert.message
    assert len(mailoutbox) == 1 and mailoutbox[0].to == [ADMIN_EMAIL]
    assert "Destroy still failing" in mailoutbox[0].subject

    fake.traveller.shift(timedelta(seconds=5))
    assert destroys_stuck_alert() == 0
    fake.traveller.shift(timedelta(hours=1))
    assert destroys_stuck_alert() == 0
    assert Alert.objects.count() == 1 and len(mailoutbox) == 1
    assert fresh(stuck).status == S.STOPPING


def test_no_destroy_alert_before_15_minutes_or_for_other_statuses(fake, make_rental, mailoutbox):
    long_ago = START - timedelta(hours=2)
    make_rental(S.STOPPING, stop_requested_at=START - timedelta(minutes=14, seconds=59))
    for status in (S.ACTIVE, S.DESTROYED, S.FAILED):
        make_rental(status, stop_requested_at=long_ago)

    assert destroys_stuck_alert() == 0
    assert not Alert.objects.exists() and mailoutbox == []


def test_a_real_failing_destroy_is_alerted_after_15_minutes(
    fake, active_rental, mailoutbox, django_capture_on_commit_callbacks
):
    """The teardown keeps failing (provider 500s); the alert comes once 15 minutes have passed."""
    rental = active_rental()
    services.rental_stop(rental=rental, reason="Done")
    from inventory.providers.base import Transient

    fake.fail["destroy"] = [Transient("500 Internal Server Error", status=500)] * 1000
    # 10 min of retries
    assert rental_teardown(rental_id=rental.pk, budget_seconds=600, waits=fake.waits) is False
    assert destroys_stuck_alert() == 0

    fake.traveller.shift(timedelta(minutes=5))
    assert rental_teardown(rental_id=rental.pk, budget_seconds=120, waits=fake.waits) is False
    assert timezone.now() - fresh(rental).stop_requested_at >= timedelta(minutes=15)
    assert destroys_stuck_alert() == 1
    assert len(mailoutbox) == 1
    assert fresh(rental).status == S.STOPPING
